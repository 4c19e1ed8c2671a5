/**
 * ChatSession keeps the history and renders it with the chat template each turn; each turn
 * equals Model.generate on the same messages, and the prefix cache serves the earlier turns.
 */
import { ChatSession, DEMO_MODEL_DIR, Model } from '../../lib';

let model: Model;
beforeAll(async () => {
  model = await Model.load(DEMO_MODEL_DIR, { device: 'cpu' });
});
afterAll(async () => model?.dispose());

test('two turns: history kept, each turn = Model.generate on the same messages, the first turn reused from the cache', async () => {
  // A system prompt long enough that the first turn's prompt fills whole 64-token pages.
  const chat = new ChatSession(model, { system: 'Answer in the words of the King James Bible, as the prophets spake. '.repeat(8) });
  let streamed = '';
  const g1 = chat.send('Who made the heaven and the earth?', { maxNewTokens: 30 });
  for await (const c of g1) streamed += c.text;
  const r1 = await g1.result;
  expect(streamed).toBe(r1.text);
  expect(chat.messages.map((m) => m.role)).toEqual(['system', 'user', 'assistant']);
  expect(chat.messages[2].content).toBe(r1.text);

  const before = model.prefixCacheStats()!.hitTokens;
  const r2 = await chat.send('And what did he say?', { maxNewTokens: 30 }).result;
  const same = await model.generate({ messages: chat.messages.slice(0, 3).concat([{ role: 'user', content: 'And what did he say?' }]), maxNewTokens: 30 }).result;
  expect(r2.tokens).toEqual(same.tokens);
  expect(r2.promptTokens).toBeGreaterThan(r1.promptTokens + r1.tokens.length - 5);
  // the second turn's prompt starts with the first's: its full pages came from the cache
  expect(r1.promptTokens).toBeGreaterThan(128);
  expect(model.prefixCacheStats()!.hitTokens - before).toBeGreaterThanOrEqual(64 * Math.floor((r1.promptTokens - 1) / 64));
  expect(chat.messages).toHaveLength(5);
});

test('one turn at a time; a failed or aborted turn leaves the history as it was', async () => {
  const chat = new ChatSession(model);
  const ac = new AbortController();
  const g = chat.send('Hello', { maxNewTokens: 50, signal: ac.signal });
  expect(() => chat.send('again')).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  ac.abort();
  await expect(g.result).rejects.toMatchObject({ code: 'E_ABORTED' });
  expect(chat.messages).toEqual([]);
  await expect(chat.send('x', { seed: 1.5 }).result).rejects.toMatchObject({ code: 'E_RANGE' });
  expect(chat.messages).toEqual([]);
  const r = await chat.send('Hello', { maxNewTokens: 3 }).result;
  expect(chat.messages).toEqual([{ role: 'user', content: 'Hello' }, { role: 'assistant', content: r.text }]);
  expect(() => new ChatSession(model, { messages: [{ role: 'robot', content: 'x' }] as never })).toThrow(expect.objectContaining({ code: 'E_ARG' }));
});
