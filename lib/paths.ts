/** Where the package lives: lib/ under ts-jest, dist/lib/ once compiled. */
import * as fs from 'node:fs';
import * as path from 'node:path';

function findRoot(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj) && (JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name === 'dsv2') return dir;
    if (path.dirname(dir) === dir) return path.resolve(start, '..');
  }
}

/** The directory holding dsv2's package.json. */
export const PACKAGE_ROOT = findRoot(__dirname);

/** dsv2's package.json version. */
export const VERSION: string = (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
