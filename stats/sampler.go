package stats

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// SamplerCapacityDefault is the number of durations a Sampler keeps when no
// capacity is given. 100,000 samples cost 800 KB and give percentiles well
// within a percent of the exact values, while bounding memory however busy
// the pool is.
const SamplerCapacityDefault = 100_000

// Sampler keeps the durations observed during one report interval, bounded
// in memory, so that the report can show percentiles of start lag and run
// time without storing every observation of a busy interval.
//
// Until it is full, a Sampler keeps every duration, and its percentiles are
// exact. Once full, it keeps a uniform random sample of everything observed
// since the last Reset (reservoir sampling, Algorithm R), so the percentiles
// remain unbiased estimates.
//
// A Sampler is safe for concurrent use, since every worker records into the
// same one. The zero Sampler is ready to use with SamplerCapacityDefault.
type Sampler struct {
	mu       sync.Mutex
	capacity int             // <= 0 means SamplerCapacityDefault
	samples  []time.Duration // the kept samples, len <= capacity
	count    int64           // observations since the last Reset
	rng      *rand.Rand      // created on first need
}

// NewSampler returns an empty Sampler keeping at most capacity durations. A
// capacity of zero or less means SamplerCapacityDefault. Memory grows with
// the samples kept instead of being reserved up front, so an idle pool pays
// nothing for a large capacity.
func NewSampler(capacity int) *Sampler {
	return &Sampler{capacity: capacity}
}

// Add records one observed duration. While fewer than capacity durations
// have been observed since the last Reset, d is kept. After that, the n-th
// observation replaces a random kept sample with probability capacity/n
// (Algorithm R), which keeps every observation equally likely to be in the
// sample.
func (s *Sampler) Add(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count++
	c := s.capacity
	if c <= 0 {
		c = SamplerCapacityDefault
	}
	if len(s.samples) < c {
		s.samples = append(s.samples, d)
		return
	}
	if s.rng == nil {
		s.rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if j := s.rng.Int64N(s.count); j < int64(c) {
		s.samples[j] = d
	}
}

// Count returns how many durations were observed since the last Reset,
// including those the reservoir did not keep, so the report can state how
// many observations the percentiles stand for.
func (s *Sampler) Count() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Percentiles returns the 50th, 95th and 99th percentiles of the kept
// samples by the nearest-rank method: with the n samples sorted ascending,
// the p-th percentile is sorted[ceil(p/100*n)-1]. Nearest rank always
// returns an observed duration, never an interpolated one. With no samples
// it returns the zero Percentiles. It does not reset the Sampler.
func (s *Sampler) Percentiles() Percentiles {
	s.mu.Lock()
	sorted := slices.Clone(s.samples)
	s.mu.Unlock()
	if len(sorted) == 0 {
		return Percentiles{}
	}
	slices.Sort(sorted)
	return Percentiles{
		P50: nearestRank(sorted, 50),
		P95: nearestRank(sorted, 95),
		P99: nearestRank(sorted, 99),
	}
}

// nearestRank returns the p-th percentile (0 < p <= 100) of the non-empty,
// ascending sorted. It computes ceil(p*n/100) in integers so that no
// floating-point rounding can pick the wrong rank.
func nearestRank(sorted []time.Duration, p int) time.Duration {
	n := len(sorted)
	rank := (p*n + 99) / 100
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// Reset forgets every observation, so the Sampler can serve the next report
// interval. It keeps the allocated storage for reuse.
func (s *Sampler) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = s.samples[:0]
	s.count = 0
}
