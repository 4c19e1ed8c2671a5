/** What this installation of dsv2 is and can do: build, CPU, CUDA devices. */
import { loadAddon, type RawCudaDevice } from './native';
import { native } from './errors';

export interface Info {
  /** Package version (package.json). */
  version: string;
  /** The addon file that was loaded. */
  addon: string;
  node: string;
  platform: string;
  cpu: { threads: number; isa: 'avx512' | 'avx2' | 'scalar'; compiler: string };
  cuda: {
    /** The addon contains CUDA kernels. */
    compiled: boolean;
    /** Architectures they were compiled for (CMAKE_CUDA_ARCHITECTURES). */
    archs: string[];
    /** CUDA runtime version linked into the addon, e.g. "13.0"; null when not compiled. */
    runtime: string | null;
    /** Version the installed driver supports, e.g. "13.0"; null without a driver. */
    driver: string | null;
    devices: RawCudaDevice[];
    /** True when dsv2 will run CUDA work on this machine. */
    usable: boolean;
    /** Why CUDA is not used here (null when usable). */
    reason: string | null;
  };
}

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

export async function info(): Promise<Info> {
  const { binding, path } = loadAddon();
  const b = binding.buildInfo();
  const c = await native(binding.cudaInfo());
  return {
    version: b.version,
    addon: path,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpu: { threads: b.threads, isa: b.cpuIsa, compiler: b.compiler },
    cuda: {
      compiled: c.compiled,
      archs: c.archs ? c.archs.split(',') : [],
      runtime: c.compiled ? cudaVersion(c.runtimeVersion) : null,
      driver: cudaVersion(c.driverVersion),
      devices: c.devices,
      usable: c.unavailable === null,
      reason: c.unavailable,
    },
  };
}
