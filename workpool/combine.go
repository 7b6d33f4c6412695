package workpool

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgworkpool/pgworkpool/internal/store"
)

// Concurrent Enqueue calls of one Pool share commits. With many producers,
// one transaction per item costs Postgres more than the item's rows: the
// statements' fixed costs, a commit record and a WAL flush each. In the
// steady benchmark, eight producers' backends were sampled waiting on
// WALWrite or WALSync more than on anything else, and their one-row insert
// took 0.11 ms per item. Shared, it took 0.07 ms per item in a later run,
// where eight producers formed groups of about two. So once
// maxCommitsInFlight commits are in flight, calls queue, and the calls
// that queued are written together in one transaction when a commit ends:
// calls with equal options by one statement. A call that finds a free
// place commits at once, on its own goroutine and with its own context,
// exactly as without combining, so a lone producer waits for nothing.
// Every call returns only after its own rows committed (or failed), with
// its own IDs.
//
// Producers that enqueue in a loop come back as soon as their commit
// returns, but the next group was already on its way without them: eight
// producers formed two groups of four that took turns, each producer
// waiting for two commits per item. So after a shared commit the next one
// waits, for at most regroupWait, until as many calls have queued as that
// commit released (see regroup): the groups become one.

// enqueueCall is one Enqueue (or EnqueueBatch) call on its way to the
// database.
type enqueueCall struct {
	work store.NewWork
	// carry says the rows may ride in the loop's iteration: false for a
	// call made by an onComplete (see holdingWorkRows).
	carry bool

	state atomic.Int32 // callQueued, callTaken or callAbandoned
	batch atomic.Pointer[sharedCommit]
	done  chan struct{} // closed once ids, segment and err are set

	ids     []WorkID
	segment int64
	err     error
}

const (
	callQueued    int32 = iota // waiting for a commit in flight to end
	callTaken                  // part of a commit: its outcome is the commit's
	callAbandoned              // its caller's context ended first; never written
)

// sharedCommit is a commit of queued calls: its context ends once every
// caller in it has given up, so a database that stopped answering holds
// no caller past its own deadline and no statement past its last caller.
type sharedCommit struct {
	waiting atomic.Int32
	cancel  context.CancelFunc
}

func (c *sharedCommit) leave() {
	if c.waiting.Add(-1) == 0 {
		c.cancel()
	}
}

// maxCommitsInFlight is how many enqueue commits of one Pool run at once
// before calls queue. One alone leaves its connection idle while its
// answer travels back and the next group forms; more overlap those waits,
// at the cost of smaller groups and more commits. In the steady benchmark
// (eight producers) three did best while the loop ran an iteration for
// every few items; once it gathered work (loop.DriverConfig.GatherDelay),
// the commits it no longer made left the producers' commits as the cost
// to cut, and one did best: jobs/s with one, two, three and four in
// flight, two rounds each, 9,005/8,726, 8,465/8,343, 7,791/7,013 and
// 7,151/7,024 (without gathering: 5,622/5,497, 6,171/6,096, 6,052/5,915).
const maxCommitsInFlight = 1

// regroupWait bounds how long a shared commit waits for the callers of
// the commit before it to queue again (see regroup). In the steady
// benchmark (eight producers, one item per call) groups went from about
// four items to eight and throughput rose by a quarter to a third: jobs/s
// without the wait 8,881 and 8,554; with 50 µs 10,967 and 10,882; 100 µs
// 10,789 and 11,928; 200 µs 11,127 and 11,883; 400 µs 11,800 and 11,519.
// The shortest wait that did as well as the longer ones is taken: it is
// spent in full only when those callers do not come back, as when each
// call comes from a different request.
const regroupWait = 100 * time.Microsecond

// regroupBackoff is how many groups leave without waiting after a wait
// that ran out: callers that did not come back once (each call from a
// different request, say) will mostly not come back next time either,
// and every wait spent in full would add its 100 µs to the queued calls
// and spin a processor for as long.
const regroupBackoff = 8

// combiner queues calls while maxCommitsInFlight commits are in flight.
type combiner struct {
	// write writes calls in one transaction and sets their outcomes; it
	// does not close done.
	write func(ctx context.Context, calls []*enqueueCall)
	// regroupWait is regroupWait; tests lengthen it, so that scheduling
	// on a slow machine cannot split the groups they count.
	regroupWait time.Duration

	mu sync.Mutex
	// noRegroup counts the groups left to go without waiting (see
	// regroupBackoff).
	noRegroup int
	inFlight  int
	queue     []*enqueueCall
}

// do returns true once call's outcome is set, or false if ctx ended first,
// leaving call.err for the caller to set: nothing was written if the call
// was still queued, and the outcome is unknown if its commit was in
// flight.
func (c *combiner) do(ctx context.Context, call *enqueueCall) (written bool) {
	call.done = make(chan struct{})
	c.mu.Lock()
	if c.inFlight < maxCommitsInFlight {
		c.inFlight++
		c.mu.Unlock()
		call.state.Store(callTaken)
		c.write(ctx, []*enqueueCall{call})
		close(call.done)
		c.handOff()
		return true
	}
	c.queue = append(c.queue, call)
	c.mu.Unlock()
	select {
	case <-call.done:
		return true
	case <-ctx.Done():
	}
	if call.state.CompareAndSwap(callQueued, callAbandoned) {
		return false
	}
	select {
	case <-call.done: // it ended as the context did: report the outcome
		return true
	default:
	}
	// In flight: the rows may or may not commit, as when a context ends
	// during any statement. The commit goes on for the others in it.
	call.batch.Load().leave()
	return false
}

// handOff commits the calls that queued during a commit, on a goroutine of
// their own that keeps the commit's place in flight, or gives the place up
// if none did.
func (c *combiner) handOff() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		c.inFlight--
		return
	}
	go c.drain(1)
}

// drain commits the queued calls group by group until the queue is empty;
// released is how many calls the commit before the first group released.
func (c *combiner) drain(released int) {
	for {
		c.regroup(released)
		c.mu.Lock()
		calls := c.queue
		c.queue = nil
		if len(calls) == 0 {
			c.inFlight--
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		ctx, cancel := context.WithCancel(context.Background())
		shared := &sharedCommit{cancel: cancel}
		shared.waiting.Store(int32(len(calls))) // each call leaves once, unless it gets its outcome
		taken := calls[:0]
		for _, call := range calls {
			call.batch.Store(shared)
			if call.state.CompareAndSwap(callQueued, callTaken) {
				taken = append(taken, call)
			} else {
				shared.waiting.Add(-1)
			}
		}
		released = len(taken)
		if len(taken) > 0 {
			c.write(ctx, taken)
			for _, call := range taken {
				close(call.done)
			}
		}
		cancel()
	}
}

// regroup waits, for at most c.regroupWait, until at least released calls
// are queued: those of the commit that just ended, if their callers
// enqueue again at once. It yields the processor rather than sleep, as
// the wait is far shorter than a timer's resolution on an idle process
// (a millisecond), and so that those callers run meanwhile. A wait that
// runs out spares the next regroupBackoff groups the wait.
func (c *combiner) regroup(released int) {
	if released <= 0 || c.regroupWait <= 0 {
		return
	}
	deadline := time.Now().Add(c.regroupWait)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.noRegroup > 0 {
		c.noRegroup--
		return
	}
	for len(c.queue) < released {
		if time.Now().After(deadline) {
			c.noRegroup = regroupBackoff
			return
		}
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
	}
}
