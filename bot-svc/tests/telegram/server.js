// Starts telegram-test-api (a Bot API stand-in) on 127.0.0.1:<port>, and
// in front of it, on <proxy port>, a proxy that passes everything through
// except that it answers the next N sendMessage calls with Telegram's 429
// (`retry_after` seconds) after `POST /inject429?count=N&retry_after=S`.
// Optional third argument: how long the stand-in keeps messages, in seconds
// (600 by default; bench/bot/run.sh needs longer).
//
// Webhooks: the stand-in (4.2.1) posts each update to the URL given to
// setWebhook, but without the `X-Telegram-Bot-Api-Secret-Token` header
// Telegram adds when setWebhook was given a `secret_token`. So it is given
// this proxy's `/relay/<bot token>` instead, which posts on to the bot's
// URL with the header, as Telegram does, and answers with the bot's
// status. `GET /webhooks` shows what is set (url, whether a secret).
// `GET /stats` counts what the bot sent (all, and "Voting closed" ones).
// Used by munity/tests/telegram_bot.rs and bench/bot; runs until killed.
const http = require('http');
const TelegramServer = require('telegram-test-api');

const port = Number(process.argv[2]);
const proxyPort = Number(process.argv[3]);
const storeTimeout = Number(process.argv[4] || 600);
const server = new TelegramServer({ port, host: '127.0.0.1', storeTimeout });

const hooks = {};
const setWebhook = server.setWebhook.bind(server);
server.setWebhook = (webhook, botToken) => {
  hooks[botToken] = { url: webhook.url, secret: webhook.secret_token || '' };
  setWebhook({ ...webhook, url: `http://127.0.0.1:${proxyPort}/relay/${encodeURIComponent(botToken)}` }, botToken);
};
const deleteWebhook = server.deleteWebhook.bind(server);
server.deleteWebhook = (botToken) => {
  delete hooks[botToken];
  deleteWebhook(botToken);
};

function relay(req, res, botToken) {
  const hook = hooks[botToken];
  if (!hook) {
    res.writeHead(404);
    res.end();
    return;
  }
  const target = new URL(hook.url);
  const headers = { 'content-type': 'application/json' };
  if (hook.secret) headers['x-telegram-bot-api-secret-token'] = hook.secret;
  const upstream = http.request({
    host: target.hostname, port: target.port, path: target.pathname + target.search, method: 'POST', headers,
  }, (answer) => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  upstream.on('error', () => { res.writeHead(502); res.end(); });
  req.pipe(upstream);
}

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
  if (url.pathname.startsWith('/relay/')) {
    relay(req, res, decodeURIComponent(url.pathname.slice('/relay/'.length)));
    return;
  }
  if (url.pathname === '/webhooks') {
    const result = Object.fromEntries(Object.entries(hooks)
      .map(([token, hook]) => [token, { url: hook.url, has_secret: hook.secret !== '' }]));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, result }));
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
  // teloxide sends setWebhook as multipart/form-data (it may carry a
  // certificate file), which Telegram reads and the stand-in does not: its
  // text fields are passed on as JSON.
  const type = String(req.headers['content-type'] || '');
  if (url.pathname.toLowerCase().endsWith('/setwebhook') && type.startsWith('multipart/form-data')) {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const boundary = type.split('boundary=')[1];
      const fields = {};
      for (const part of Buffer.concat(chunks).toString('utf8').split(`--${boundary}`)) {
        const match = /name="([^"]+)"[^]*?\r\n\r\n([^]*)\r\n$/.exec(part);
        if (match) fields[match[1]] = match[2];
      }
      const body = JSON.stringify(fields);
      const upstream = http.request({
        host: '127.0.0.1', port, path: req.url, method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      }, (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      });
      upstream.on('error', () => { res.writeHead(502); res.end(); });
      upstream.end(body);
    });
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
