// The status page in a real browser: Debian's Chromium, driven by
// playwright-core (no downloaded browser). Run by run.sh, which starts the
// devnet and passes its addresses:
//
//   node status.test.mjs --node http://127.0.0.1:PORT --node0-pid PID
//        [--proxy http://127.0.0.1:PORT --stop-upstream-pid PID --stop-upstream-name URL] [--screenshots DIR]
//        [--settle-ms 3000]   (how long the charts collect points before the screenshot)
//
// Checks, each of which fails the run:
//  1. the node's page loads and shows a head number;
//  2. the head advances on screen without a reload (a marker set on the
//     window survives, no navigation happened);
//  3. the validator table lists the devnet's 4 validators, all active;
//  4. the page renders the proxy's snapshot shape (the contract in
//     docs/operations.md) served by a stand-in server: upstream table with a
//     stopped upstream shown as down, cache card and chart; the page shows
//     the unreachable message when that server stops and recovers when it
//     comes back;
//  5. with --proxy: the real proxy's page (run.sh starts one): it loads,
//     its verified head advances without a reload, the validator table lists
//     the 4 trusted validators, and once --stop-upstream-pid is killed that
//     upstream (--stop-upstream-name) shows as down with an upstream-down alarm;
//  6. node 0 killed: the unreachable message appears.
// Screenshots of each page go to --screenshots (default target/browser-screenshots).

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const nodeUrl = args.node;
if (!nodeUrl) throw new Error("--node http://127.0.0.1:PORT is required");
const shots = resolve(args.screenshots || join(here, "../../target/browser-screenshots"));
mkdirSync(shots, { recursive: true });

const DEVNET_OWNERS = [
  "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
  "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
  "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
  "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
];

let passed = 0;
function check(cond, what) {
  if (!cond) throw new Error("FAILED: " + what);
  passed += 1;
  console.log("ok - " + what);
}

async function headNumber(page) {
  const t = await page.locator("#head-number").textContent();
  return Number((t || "").replace(/[^0-9]/g, "") || NaN);
}

const profile = mkdtempSync(join(tmpdir(), "luxtensor-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  chromiumSandbox: false,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1200, height: 900 },
  timeout: 30_000,
});
const stand = { server: null, sockets: new Set() };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15_000);
  let navigations = 0;
  page.on("framenavigated", f => { if (f === page.mainFrame()) navigations += 1; });

  // 1. Loads.
  await page.goto(nodeUrl + "/", { waitUntil: "load" });
  await page.waitForFunction(() => /\d/.test(document.getElementById("head-number").textContent));
  const first = await headNumber(page);
  check(Number.isFinite(first), `node page loads and shows head #${first}`);
  check((await page.locator("#title").textContent()) === "LuxTensor node", "page title says node");

  // 2. Advances live.
  await page.evaluate(() => { window.__noReload = true; });
  await page.waitForFunction(n => Number(document.getElementById("head-number").textContent.replace(/\D/g, "")) > n,
    first, { timeout: 10_000 });
  const second = await headNumber(page);
  check(second > first, `head advanced on screen from ${first} to ${second}`);
  check(await page.evaluate(() => window.__noReload === true) && navigations === 1, "without a reload");

  // 3. Validators.
  const rows = page.locator("#validators tbody tr");
  await page.waitForFunction(() => document.querySelectorAll("#validators tbody tr").length > 0);
  const owners = await rows.evaluateAll(trs => trs.map(tr => tr.querySelector("td").title.toLowerCase()));
  const statuses = await rows.evaluateAll(trs => trs.map(tr => tr.dataset.status));
  check(owners.length === 4 && DEVNET_OWNERS.every(o => owners.includes(o)),
    `validator table lists the devnet's 4 validators (${owners.length} rows)`);
  check(statuses.every(s => s === "active"), "all four are active");
  check(await page.locator('.chart[data-key="blockIntervalMs"] canvas').isVisible(), "block interval chart drawn");
  check(await page.locator("#banner").getAttribute("data-state") === "ok", "no unreachable banner while the node runs");
  // Let the charts collect a few points before the picture.
  await page.waitForTimeout(Number(args["settle-ms"] || 3000));
  await page.screenshot({ path: join(shots, "node.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal scrolling at phone width (overflow ${overflow}px)`);
  await page.screenshot({ path: join(shots, "node-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1200, height: 900 });

  // 4. The proxy's snapshot shape, from a stand-in server.
  const standPage = await context.newPage();
  standPage.setDefaultTimeout(15_000);
  const port = await startStandIn(stand, 0);
  await standPage.goto(`http://127.0.0.1:${port}/`);
  await standPage.waitForSelector('#upstreams tbody tr[data-down="true"]');
  const states = await standPage.locator("#upstreams tbody tr").evaluateAll(trs => trs.map(tr => tr.dataset.state + "/" + tr.dataset.down));
  check(states.join(",") === "healthy/false,unavailable/true", `proxy shape: a stopped upstream shows as down (${states})`);
  check(await standPage.locator('[data-field="cache"]').isVisible(), "proxy shape: cache card shown");
  check(await standPage.locator('.chart[data-key="cacheHitRatio"]').isVisible(), "proxy shape: cache hit ratio chart");
  check(!(await standPage.locator('[data-field="peers"]').isVisible()), "proxy shape: no node-only peers card");
  await stopStandIn(stand);
  await standPage.waitForSelector('#banner[data-state="down"]', { timeout: 10_000 });
  check(/unreachable/i.test(await standPage.locator("#banner").textContent()), "unreachable message when the backend stops");
  await startStandIn(stand, port);
  await standPage.waitForSelector('#banner[data-state="ok"]', { state: "attached", timeout: 10_000 });
  check((await standPage.locator("#conn").getAttribute("data-state")) === "live", "recovers when the backend comes back");
  await stopStandIn(stand);
  await standPage.close();

  // 5. The real proxy, when there is one.
  if (args.proxy) {
    const proxyPage = await context.newPage();
    proxyPage.setDefaultTimeout(15_000);
    await proxyPage.goto(args.proxy + "/");
    await proxyPage.waitForSelector("#upstreams tbody tr");
    check((await proxyPage.locator("#title").textContent()) === "LuxTensor proxy", "proxy page loads");
    await proxyPage.waitForFunction(() => /\d/.test(document.getElementById("head-number").textContent));
    const p1 = await headNumber(proxyPage);
    await proxyPage.evaluate(() => { window.__noReload = true; });
    await proxyPage.waitForFunction(n => Number(document.getElementById("head-number").textContent.replace(/\D/g, "")) > n,
      p1, { timeout: 10_000 });
    const p2 = await headNumber(proxyPage);
    check(p2 > p1 && await proxyPage.evaluate(() => window.__noReload === true),
      `proxy: verified head advanced on screen from ${p1} to ${p2} without a reload`);
    await proxyPage.waitForFunction(() => document.querySelectorAll("#validators tbody tr").length > 0);
    const pOwners = await proxyPage.locator("#validators tbody tr")
      .evaluateAll(trs => trs.map(tr => tr.querySelector("td").title.toLowerCase()));
    check(pOwners.length === 4 && DEVNET_OWNERS.every(o => pOwners.includes(o)),
      `proxy: validator table lists the light client's 4 trusted validators (${pOwners.length} rows)`);
    check(await proxyPage.locator('[data-field="cache"]').isVisible() &&
      !(await proxyPage.locator('[data-field="peers"]').isVisible()), "proxy: cache card, no peers card");
    if (args["stop-upstream-pid"]) {
      // Every upstream up first (the follower may still be catching up), so "down" below means the kill.
      await proxyPage.waitForFunction(() => {
        const rows = [...document.querySelectorAll("#upstreams tbody tr")];
        return rows.length >= 2 && rows.every(tr => tr.dataset.down === "false");
      }, null, { timeout: 30_000 });
      check(true, "proxy: all upstreams up before one is stopped");
    }
    await proxyPage.waitForTimeout(Math.min(Number(args["settle-ms"] || 3000), 10_000));
    await proxyPage.screenshot({ path: join(shots, "proxy.png"), fullPage: true });
    if (args["stop-upstream-pid"]) {
      process.kill(Number(args["stop-upstream-pid"]), "SIGKILL");
      await proxyPage.waitForSelector('#upstreams tbody tr[data-down="true"]', { timeout: 20_000 });
      const down = await proxyPage.locator('#upstreams tbody tr[data-down="true"]')
        .evaluateAll(trs => trs.map(tr => tr.querySelector("td").textContent));
      const name = args["stop-upstream-name"];
      check(name ? down.length === 1 && down[0] === name : down.length >= 1,
        `a stopped upstream shows as down on the proxy page (${down})`);
      await proxyPage.waitForSelector('#alarms li[data-code="upstream-down"]', { timeout: 10_000 });
      check(true, "proxy: the upstream-down alarm is raised");
      await proxyPage.screenshot({ path: join(shots, "proxy-upstream-down.png"), fullPage: true });
    }
    await proxyPage.close();
  }

  // 6. Node 0 stops.
  if (args["node0-pid"]) {
    process.kill(Number(args["node0-pid"]), "SIGKILL");
    await page.waitForSelector('#banner[data-state="down"]', { timeout: 15_000 });
    const banner = await page.locator("#banner").textContent();
    check(/unreachable/i.test(banner), "node 0 killed: the page says the backend is unreachable");
    await page.screenshot({ path: join(shots, "node-unreachable.png") });
  }
  console.log(`browser test: ${passed} checks passed; screenshots in ${shots}`);
} finally {
  await stopStandIn(stand).catch(() => {});
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

// A stand-in for the proxy's status endpoints: the page file itself and
// snapshots in the documented proxy shape (one upstream up, one down).
function proxySnapshot(n, withHistory) {
  const t = Date.now();
  const sample = { t, head: n, blockIntervalMs: 500, finalityLag: 1, rps: 40 + (n % 7), cacheHitRatio: 0.8 + (n % 5) / 50 };
  const snap = {
    kind: "proxy", version: "stand-in (browser test)", chainId: 31337, time: t,
    head: { number: n, hash: "0x" + "ab".repeat(32), slot: n }, finalized: { number: n - 1, hash: "0x" + "cd".repeat(32), slot: n - 1 },
    finalityLag: 1, headAgeMs: 200, epoch: { current: Math.floor(n / 8), length: 8, slotsLeft: 7 - (n % 8), slotMs: 500 },
    validators: DEVNET_OWNERS.map(owner => ({ owner, stake: "32000000000000000000", stakeTokens: "32", status: "active", epoch: null })),
    validatorsTotal: 4,
    upstreams: [
      { name: "http://127.0.0.1:8545", state: "healthy", lag: 0, latencyMs: 3, score: 100 },
      { name: "http://127.0.0.1:18545", state: "unavailable", lag: null, latencyMs: null, score: 0 },
    ],
    cache: { hits: 800, misses: 200, hitRatio: 0.8 }, connections: 2, subscriptions: 1,
    alarms: [{ level: "warn", code: "upstream-down", message: "1 of 2 upstreams is down" }],
    sample,
  };
  if (withHistory) snap.history = [sample];
  return snap;
}

function startStandIn(stand, port) {
  const html = readFileSync(join(here, "../../status/index.html"));
  let n = 100;
  const server = createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html);
    } else if (req.url === "/status.json") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(proxySnapshot(n, true)));
    } else if (req.url === "/status/events") {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      const send = () => res.write(`event: status\ndata: ${JSON.stringify(proxySnapshot(++n, false))}\n\n`);
      send();
      const timer = setInterval(send, 300);
      res.on("close", () => clearInterval(timer));
    } else {
      res.writeHead(404).end();
    }
  });
  server.on("connection", s => { stand.sockets.add(s); s.on("close", () => stand.sockets.delete(s)); });
  stand.server = server;
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, "127.0.0.1", () => ok(server.address().port));
  });
}

function stopStandIn(stand) {
  const server = stand.server;
  stand.server = null;
  if (!server) return Promise.resolve();
  for (const s of stand.sockets) s.destroy();
  return new Promise(ok => server.close(() => ok()));
}
