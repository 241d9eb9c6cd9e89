// Read by `npm run migrate` and by the server, so both see the same database and folder.
import { knexConfig } from './src/storage/database.ts';
import { loadSettings } from './src/settings.ts';

const settings = loadSettings(process.env, 'migrate');

export default knexConfig(settings);
