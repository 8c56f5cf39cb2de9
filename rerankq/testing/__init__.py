"""What the tests, the demo and the benchmarks share: offline model shapes (random weights, real
architectures), a throwaway redis-server, worker and gateway processes, waiting on a condition."""
