// A node --test reporter that prints the interop suite's lines:
//   @@ PASS|FAIL mqttjs <version>/<scenario> [:: detail]
// followed, for a failure, by the error indented with "    | ". Scenarios listed in
// tests/interop/xfail run as `todo` tests, so their failure does not fail node's exit status.
export default async function* reporter(source) {
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const data = event.data;
    if (data.nesting !== 0) continue;
    if (event.type === 'test:pass') {
      yield `@@ PASS mqttjs ${data.name}\n`;
      continue;
    }
    const error = data.details?.error;
    const cause = error?.cause ?? error;
    const message = String(cause?.message ?? cause ?? 'failed').replace(/\s+/g, ' ');
    yield `@@ FAIL mqttjs ${data.name} :: ${message}\n`;
    const stack = String(cause?.stack ?? '');
    if (stack) yield stack.split('\n').map((l) => `    | ${l}\n`).join('');
  }
}
