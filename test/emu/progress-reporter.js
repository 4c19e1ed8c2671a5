// A jest reporter that prints each test's result and duration as it finishes (the emulated
// device is slow enough that per-suite output hides where the time goes). test:cuda-emu adds it.
class ProgressReporter {
  onTestCaseResult(test, r) {
    const file = test.path.split('/').slice(-2).join('/');
    process.stderr.write(`[emu] ${r.status === 'passed' ? 'ok  ' : r.status.toUpperCase()} ${(r.duration ?? 0).toString().padStart(6)} ms  ${file} › ${r.fullName}\n`);
  }
}
module.exports = ProgressReporter;
