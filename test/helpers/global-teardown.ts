// After the last test file: the template database goes (see template.ts).
import { currentTemplate, removeTemplate } from './template.ts';

export default async function globalTeardown(): Promise<void> {
  const template = currentTemplate();
  if (template) await removeTemplate(process.env.TEST_DATABASE_URL, template);
}
