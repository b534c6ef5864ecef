// Opens a page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// and prints what it wrote into <pre id="result" data-done>. Usage: node drive.mjs URL
// The browser's own log lines and page errors go to stderr, for the test to show on failure.
import { chromium } from "playwright-core";

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  // playwright gives each launch a fresh profile (its own --user-data-dir)
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  timeout: 30_000,
});
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.error(`console.${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => console.error(`page error: ${error}`));
  await page.goto(url, { timeout: 30_000 });
  await page.waitForSelector("#result[data-done]", { state: "attached", timeout: 30_000 });
  console.log(await page.textContent("#result"));
} finally {
  await browser.close();
}
