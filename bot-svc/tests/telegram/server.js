// Starts telegram-test-api (a Bot API stand-in) on 127.0.0.1:<port>, and
// in front of it, on <proxy port>, a proxy that passes everything through
// except that it answers the next N sendMessage calls with Telegram's 429
// (`retry_after` seconds) after `POST /inject429?count=N&retry_after=S`.
// Optional third argument: how long the stand-in keeps messages, in seconds
// (600 by default; bench/bot/run.sh needs longer).
// `GET /stats` counts what the bot sent (all, and "Voting closed" ones).
// Used by munity/tests/telegram_bot.rs and bench/bot; runs until killed.
const http = require('http');
const TelegramServer = require('telegram-test-api');

const port = Number(process.argv[2]);
const proxyPort = Number(process.argv[3]);
const storeTimeout = Number(process.argv[4] || 600);
const server = new TelegramServer({ port, host: '127.0.0.1', storeTimeout });

let rejectNext = 0;
let retryAfter = 1;
let rejected = 0;

const proxy = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname === '/inject429') {
    rejectNext = Number(url.searchParams.get('count') || 1);
    retryAfter = Number(url.searchParams.get('retry_after') || 1);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true }));
    return;
  }
  if (url.pathname === '/stats') {
    const sent = server.storage.botMessages;
    const closed = sent.filter((m) => String(m.message.text || '').startsWith('Voting closed')).length;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, sent: sent.length, closed }));
    return;
  }
  if (url.pathname === '/rejected') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, result: rejected }));
    return;
  }
  // Method names are case-insensitive (teloxide sends `SendMessage`).
  if (rejectNext > 0 && url.pathname.toLowerCase().endsWith('/sendmessage')) {
    rejectNext -= 1;
    rejected += 1;
    req.resume();
    res.writeHead(429, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      ok: false,
      error_code: 429,
      description: `Too Many Requests: retry after ${retryAfter}`,
      parameters: { retry_after: retryAfter },
    }));
    return;
  }
  const upstream = http.request({
    host: '127.0.0.1', port, path: req.url, method: req.method, headers: req.headers,
  }, (answer) => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  upstream.on('error', () => { res.writeHead(502); res.end(); });
  req.pipe(upstream);
});

server.start().then(() => {
  proxy.listen(proxyPort, '127.0.0.1', () => console.log('READY'));
});
