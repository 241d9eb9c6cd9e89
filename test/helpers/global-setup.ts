// Before the first test file: the migrated database every workspace copies (see template.ts).
import { createTemplate, TEMPLATE_ENV } from './template.ts';

export default async function globalSetup(): Promise<void> {
  const template = await createTemplate(process.env.TEST_DATABASE_URL);
  // Test workers are started after this and inherit the environment; teardown runs here.
  process.env[TEMPLATE_ENV] = JSON.stringify(template);
}
