// Starts telegram-test-api (a Bot API stand-in) on 127.0.0.1:<port> and
// prints READY; runs until killed. Used by ../telegram_bot.rs.
const TelegramServer = require('telegram-test-api');

const port = Number(process.argv[2]);
const server = new TelegramServer({ port, host: '127.0.0.1', storeTimeout: 600 });
server.start().then(() => {
  console.log('READY');
});
