package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pgtest.Options{})) }

// TestModesSmoke runs every mode with tiny sizes against both systems and
// checks that each prints one JSON line per system with the mode's primary
// metrics and no error. The modes share fixed schema names, so they run one
// after the other.
func TestModesSmoke(t *testing.T) {
	url := pgtest.Shared(t).URL()
	cases := []struct {
		args []string
		keys []string
	}{
		{[]string{"-mode", "drain", "-n", "300", "-parallelism", "50", "-repeat", "2"}, []string{"jobs_per_s", "durable_jobs_per_s"}},
		{[]string{"-mode", "slots", "-n", "200", "-parallelism", "20", "-sleep", "5ms"}, []string{"jobs_per_s", "efficiency"}},
		{[]string{"-mode", "steady", "-seconds", "2", "-producers", "2", "-parallelism", "10"}, []string{"jobs_per_s"}},
		{[]string{"-mode", "steady", "-seconds", "2", "-producers", "2", "-parallelism", "10", "-producer-tx"}, []string{"jobs_per_s"}},
		{[]string{"-mode", "latency", "-seconds", "1"}, []string{"p50_ms", "p99_ms"}},
		{[]string{"-mode", "backlog", "-n", "200", "-parallelism", "50", "-backlog-rows", "2000"}, []string{"ratio", "jobs_per_s_empty", "jobs_per_s_backlog"}},
		{[]string{"-mode", "idle", "-seconds", "1", "-settle", "500ms"}, []string{"tx_per_min"}},
	}
	for _, c := range cases {
		t.Run(c.args[1], func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parseFlags(append(c.args, "-json", "-timeout", "60s"), &stderr)
			if err != nil {
				t.Fatalf("flags: %v: %s", err, stderr.String())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var stdout bytes.Buffer
			err = run(ctx, o, url, &stdout, &stderr)
			t.Log(stderr.String())
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			if len(lines) != 2 {
				t.Fatalf("want 2 JSON lines, got %d: %q", len(lines), stdout.String())
			}
			for i, want := range systemOrder {
				var m map[string]any
				if err := json.Unmarshal([]byte(lines[i]), &m); err != nil {
					t.Fatalf("line %d: %v: %s", i, err, lines[i])
				}
				if m["system"] != want || m["mode"] != o.mode {
					t.Errorf("line %d: system %v mode %v, want %s %s", i, m["system"], m["mode"], want, o.mode)
				}
				if e, ok := m["error"]; ok {
					t.Errorf("%s: %v", want, e)
				}
				for _, k := range c.keys {
					if _, ok := m[k].(float64); !ok {
						t.Errorf("%s: no numeric %q in %s", want, k, lines[i])
					}
				}
			}
			if !strings.Contains(stderr.String(), "advantage") {
				t.Errorf("no table on stderr")
			}
		})
	}
}

func TestFlagsDefaultsPerMode(t *testing.T) {
	var errOut bytes.Buffer
	for mode, d := range modeDefaults {
		o, err := parseFlags([]string{"-mode", mode}, &errOut)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if o.n != d.n || o.parallelism != d.parallelism || o.seconds != d.seconds {
			t.Errorf("%s: got n=%d parallelism=%d seconds=%g", mode, o.n, o.parallelism, o.seconds)
		}
	}
	if _, err := parseFlags([]string{"-mode", "nope"}, &errOut); err == nil {
		t.Error("unknown mode accepted")
	}
	if _, err := parseFlags([]string{"-system", "nope"}, &errOut); err == nil {
		t.Error("unknown system accepted")
	}
}

func TestTableAdvantageDirection(t *testing.T) {
	o := options{mode: "latency"}
	results := map[string]*result{
		sysPgworkpool: {system: sysPgworkpool, metrics: map[string]float64{"p50_ms": 2, "p99_ms": 10}},
		sysRiver:      {system: sysRiver, metrics: map[string]float64{"p50_ms": 4, "p99_ms": 5}},
	}
	var b bytes.Buffer
	printTable(&b, o, systemOrder, results)
	out := b.String()
	for _, want := range []string{"2.00x", "0.50x", "river / pgworkpool"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestTrackerCountsOnceAndPercentiles(t *testing.T) {
	tr := newTracker(3, 0)
	ctx := context.Background()
	for _, i := range []int{0, 1, 1, 2} {
		if err := tr.handle(ctx, jobArgs{I: i}); err != nil {
			t.Fatal(err)
		}
	}
	if !tr.wait(ctx, time.Second) || tr.completed.Load() != 3 || tr.duplicates.Load() != 1 {
		t.Fatalf("completed %d duplicates %d", tr.completed.Load(), tr.duplicates.Load())
	}
	tr.latencies = []time.Duration{4, 1, 3, 2}
	ps, n := tr.percentiles(0.5, 0.99)
	if n != 4 || ps[0] != 2 || ps[1] != 4 {
		t.Fatalf("percentiles %v of %d", ps, n)
	}
}
