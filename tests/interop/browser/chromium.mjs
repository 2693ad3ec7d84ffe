// How the browser tests launch Chromium (tests/interop/browser/run.mjs, tests/dashboard/run.mjs):
// Debian's /usr/bin/chromium, or $CHROMIUM, headless, through the caller's playwright-core.
/** Options for playwright-core's `chromium.launch`. */
export function launchOptions() {
  return {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    // Flags that work in a sandbox run as root with a closed network (playwright-core gives it a
    // new empty profile itself): without the background-networking ones Chromium keeps trying
    // to reach Google's hosts.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  };
}
