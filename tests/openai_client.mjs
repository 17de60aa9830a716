// Driven by tests/openai_client.sh: the official OpenAI client library against
// moe-server. Prints one "ok DESCRIPTION" or "not ok DESCRIPTION: why" per check.
// env: BASE_URL, API_KEY, MODEL, and the texts moe-run gives for the same requests
// (WANT_CHAT, WANT_COMPLETION, WANT_1 .. WANT_4).
import OpenAI from 'openai';

const env = process.env;
const client = new OpenAI({ baseURL: env.BASE_URL, apiKey: env.API_KEY, maxRetries: 0 });
const chatReq = { model: env.MODEL, messages: [{ role: 'user', content: 'Who made the heaven?' }], max_tokens: 30, temperature: 0 };
let failed = 0;
function check(what, cond, why) {
	if (cond) console.log(`ok ${what}`);
	else { failed++; console.log(`not ok ${what}: ${why}`); }
}
async function expectError(what, status, cls, fn) {
	try { await fn(); check(what, false, 'no error'); }
	catch (e) { check(what, e instanceof cls && e.status === status, `${e.constructor.name} ${e.status} ${e.message}`); }
}

const models = await client.models.list();
check('models.list', models.data.length === 1 && models.data[0].id === env.MODEL, JSON.stringify(models.data));

const chat = await client.chat.completions.create(chatReq);
check('chat.completions.create: the text is moe-run --chat\'s', chat.choices[0].message.content === env.WANT_CHAT,
	JSON.stringify(chat.choices[0].message.content));
check('... usage and finish_reason', chat.usage.completion_tokens === 30 && chat.choices[0].finish_reason === 'length',
	JSON.stringify(chat.usage));

const stream = await client.chat.completions.create({ ...chatReq, stream: true });
let text = '', chunks = 0, finish = null;
for await (const chunk of stream) {
	chunks++;
	text += chunk.choices[0]?.delta?.content ?? '';
	finish = chunk.choices[0]?.finish_reason ?? finish;
}
check(`streamed chat (${chunks} chunks): the same text`, text === env.WANT_CHAT && finish === 'length', JSON.stringify(text));

const lp = await client.chat.completions.create({ ...chatReq, max_tokens: 8, logprobs: true, top_logprobs: 3 });
const content = lp.choices[0].logprobs?.content ?? [];
check('chat with logprobs: one entry per token, the likeliest first',
	content.length === 8 && content.map((c) => c.token).join('') === lp.choices[0].message.content &&
	content.every((c) => c.top_logprobs.length === 3 && c.top_logprobs[0].token === c.token && c.logprob <= 0),
	JSON.stringify(lp.choices[0].logprobs));

const cmpl = await client.completions.create({ model: env.MODEL, prompt: 'And God said', max_tokens: 40, temperature: 0 });
check('completions.create: moe-run\'s text', cmpl.choices[0].text === env.WANT_COMPLETION, JSON.stringify(cmpl.choices[0].text));

const four = await Promise.all([1, 2, 3, 4].map((i) => client.completions.create(
	{ model: env.MODEL, prompt: `And the LORD said unto ${i}`, max_tokens: 48, temperature: 0 })));
four.forEach((r, i) => check(`concurrent client ${i + 1}: moe-run's text`, r.choices[0].text === env[`WANT_${i + 1}`],
	JSON.stringify(r.choices[0].text)));

const bad = new OpenAI({ baseURL: env.BASE_URL, apiKey: 'wrong', maxRetries: 0 });
await expectError('a wrong API key: AuthenticationError 401', 401, OpenAI.AuthenticationError, () => bad.models.list());
await expectError('an unknown model: NotFoundError 404', 404, OpenAI.NotFoundError,
	() => client.chat.completions.create({ ...chatReq, model: 'gpt-4o' }));
await expectError('temperature 5: BadRequestError 400', 400, OpenAI.BadRequestError,
	() => client.chat.completions.create({ ...chatReq, temperature: 5 }));

// leave a stream after its first chunk: the server cancels the request
const ac = new AbortController();
const long = await client.completions.create({ model: env.MODEL, prompt: 'And God said', max_tokens: 400, stream: true },
	{ signal: ac.signal });
let got = 0;
try {
	for await (const chunk of long) { got += chunk.choices[0].text.length; if (got > 0) ac.abort(); }
} catch (e) { /* the abort */ }
await new Promise((r) => setTimeout(r, 1000));
const metrics = await (await fetch(env.BASE_URL.replace(/\/v1$/, '/metrics'))).text();
const canceled = Number(/^moe_requests_canceled_total (\d+)/m.exec(metrics)[1]);
const busy = Number(/^moe_slots_busy (\d+)/m.exec(metrics)[1]);
check('an aborted stream is canceled and its slot freed', canceled === 1 && busy === 0, `canceled ${canceled}, busy ${busy}`);
process.exit(failed ? 1 : 0);
