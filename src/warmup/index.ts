export { warmUp } from './warmup';
export type { WarmUpOptions, WarmUpReport } from './warmup';
