// A library or CLI path that calls process.exit() would end the jest run early and quietly;
// make it a loud test failure instead.
process.exit = ((code?: number) => {
  throw new Error(`process.exit(${code ?? ''}) was called during the tests`);
}) as typeof process.exit;
