package workpool

// QueuedEnqueues reports how many Enqueue calls of p wait for a commit in
// flight to end, so that tests can hold calls in the queue.
func QueuedEnqueues(p *Pool) int {
	p.enqueues.mu.Lock()
	defer p.enqueues.mu.Unlock()
	return len(p.enqueues.queue)
}

// MaxCommitsInFlight is maxCommitsInFlight, for tests.
const MaxCommitsInFlight = maxCommitsInFlight

// Leads reports whether p is started and its driver holds the pool's
// leadership, so that tests can tell which process runs the loop.
func Leads(p *Pool) bool {
	r := p.runState()
	return r != nil && r.driver.Leader()
}

// WorkerID returns the id of the started p's row in the workers table.
func WorkerID(p *Pool) int64 { return p.runState().worker.ID }
