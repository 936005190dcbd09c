// dist/cjs holds CommonJS under a "type": "module" package: a nested
// package.json tells Node (and TypeScript's node16/nodenext resolution) so.
import { writeFileSync } from 'node:fs';
writeFileSync(new URL('../dist/cjs/package.json', import.meta.url), JSON.stringify({ type: 'commonjs' }) + '\n');
