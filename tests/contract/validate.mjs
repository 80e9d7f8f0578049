// Validate an AsyncAPI document with the AsyncAPI project's own parser (the one its CLI and
// Studio use): JSON Schema of the spec plus its Spectral ruleset. Prints one line per
// diagnostic; exits 1 when any is an error (or the document does not parse), else 0.
// Usage: node validate.mjs path/to/asyncapi.json
import { Parser, fromFile } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "info", "hint"];
const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs <asyncapi document>");
  process.exit(2);
}
const { document, diagnostics } = await fromFile(new Parser(), path).parse();
for (const d of diagnostics) {
  const where = d.path.length ? d.path.join(".") : "(document)";
  console.log(`${SEVERITY[d.severity] ?? d.severity} ${d.code} at ${where}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
if (document === undefined || errors > 0) {
  console.log(`invalid: ${errors} error(s)`);
  process.exit(1);
}
console.log(`valid: AsyncAPI ${document.version()}, ${document.channels().length} channels`);
