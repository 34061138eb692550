// tsc compiles only TypeScript: the icons go to dist/icons, where the compiled files name them.
const fs = require('fs');
const path = require('path');

fs.mkdirSync(path.join('dist', 'icons'), { recursive: true });
for (const name of fs.readdirSync('icons').filter((file) => file.endsWith('.svg'))) {
  fs.copyFileSync(path.join('icons', name), path.join('dist', 'icons', name));
}
