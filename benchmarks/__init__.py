"""llmhost benchmarks: ratios against in-process baselines, measured side by side in one run."""
