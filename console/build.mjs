// Builds the console's front-end into the Python package's static/dist (git-ignored):
// console.js (our code with xterm.js, asciinema-player and a SHA-256), console.css (their
// styles) and the Swagger UI files for the OpenAPI page, all from the pinned npm packages.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "fleetgate", "controlplane", "console", "static", "dist");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outfile: join(out, "console.js"),
  legalComments: "linked",
  logLevel: "warning",
});
await build({
  entryPoints: [join(here, "src", "vendor.css")],
  bundle: true,
  minify: true,
  outfile: join(out, "console.css"),
  logLevel: "warning",
});
const swagger = join(here, "node_modules", "swagger-ui-dist");
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css"]) {
  copyFileSync(join(swagger, name), join(out, name));
}
