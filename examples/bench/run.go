package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// metric is one row of the table.
type metric struct {
	key          string
	label        string
	higherBetter bool
	// primary marks the mode's headline figures (starred in the table).
	primary bool
	// info rows describe the environment: no advantage is computed.
	info bool
}

// walMetric is the context row of the WAL a run wrote after its schema was
// set up (runSystem): the enqueue, the timed phase and, in backlog mode,
// the future rows.
var walMetric = metric{key: "wal_mb", label: "WAL written by the run after schema set-up, MB", info: true}

// modeMetrics lists each mode's rows, in order.
var modeMetrics = map[string][]metric{
	"drain": {
		{key: "jobs_per_s", label: "jobs/s (Start to last handler return)", higherBetter: true, primary: true},
		{key: "durable_jobs_per_s", label: "jobs/s (Start to all recorded finished in the DB)", higherBetter: true},
		{key: "enqueue_jobs_per_s", label: "batch enqueue rows/s (before Start)", higherBetter: true},
		{key: "seconds", label: "drain time, s", higherBetter: false},
		{key: "first_job_ms", label: "Start to the first handler's start, ms", higherBetter: false},
		walMetric,
	},
	"slots": {
		{key: "efficiency", label: "slot efficiency (jobs/s ÷ (parallelism ÷ sleep))", higherBetter: true, primary: true},
		{key: "jobs_per_s", label: "jobs/s (Start to last handler return)", higherBetter: true, primary: true},
		{key: "durable_jobs_per_s", label: "jobs/s (Start to all recorded finished in the DB)", higherBetter: true},
		{key: "seconds", label: "drain time, s", higherBetter: false},
		{key: "first_job_ms", label: "Start to the first handler's start, ms", higherBetter: false},
		walMetric,
	},
	"steady": {
		{key: "jobs_per_s", label: "completed jobs/s (after 1 s warm-up)", higherBetter: true, primary: true},
		{key: "enqueue_jobs_per_s", label: "enqueued jobs/s (one job per call)", higherBetter: true},
		{key: "backlog_at_end", label: "enqueued but not completed at the end", higherBetter: false},
		walMetric,
	},
	"latency": {
		{key: "p50_ms", label: "enqueue-to-start p50, ms", higherBetter: false, primary: true},
		{key: "p90_ms", label: "enqueue-to-start p90, ms", higherBetter: false},
		{key: "p99_ms", label: "enqueue-to-start p99, ms", higherBetter: false, primary: true},
		{key: "max_ms", label: "enqueue-to-start max, ms", higherBetter: false},
		{key: "jobs", label: "jobs measured", higherBetter: true},
	},
	"idle": {
		{key: "tx_per_min", label: "transactions/min while idle", higherBetter: false, primary: true},
		{key: "tx", label: "transactions in the window", higherBetter: false},
		{key: "baseline_tx_per_min", label: "noise floor: transactions/min of a twin database with no client", info: true},
	},
	"backlog": {
		{key: "ratio", label: "backlog ratio (jobs/s with ÷ without backlog)", higherBetter: true, primary: true},
		{key: "jobs_per_s_empty", label: "jobs/s without backlog", higherBetter: true, primary: true},
		{key: "jobs_per_s_backlog", label: "jobs/s with backlog", higherBetter: true, primary: true},
		{key: "durable_ratio", label: "backlog ratio, durable jobs/s", higherBetter: true},
		{key: "first_job_ms_empty", label: "Start to the first handler's start without backlog, ms", higherBetter: false},
		{key: "first_job_ms_backlog", label: "Start to the first handler's start with backlog, ms", higherBetter: false},
		{key: "backlog_insert_rows_per_s", label: "future rows inserted/s", higherBetter: true},
		walMetric,
	},
}

// systemOrder is the order systems run in: River first, then ours.
var systemOrder = []string{sysRiver, sysPgworkpool}

// run executes the benchmark against the server at url and prints the
// results: the table on stdout (stderr with -json) and, with -json, one JSON
// line per system on stdout.
func run(ctx context.Context, o options, url string, stdout, stderr io.Writer) error {
	connCfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parse database URL: %w", err)
	}
	admin, err := pgx.ConnectConfig(ctx, connCfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))

	table := stdout
	if o.json {
		table = stderr
	}
	e := &env{
		o:       o,
		connCfg: connCfg,
		admin:   admin,
		log:     newLogSink(stderr, 20),
		progress: func(format string, args ...any) {
			fmt.Fprintf(stderr, "  [%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
		},
	}
	var names []string
	for _, s := range systemOrder {
		if o.system == "both" || o.system == s {
			names = append(names, s)
		}
	}
	var serverVersion string
	_ = admin.QueryRow(ctx, "SHOW server_version").Scan(&serverVersion)
	var fsync string
	_ = admin.QueryRow(ctx, "SHOW fsync").Scan(&fsync)
	fmt.Fprintf(table, "mode %s: %s\n", o.mode, describe(o))
	order := strings.Join(names, ", ")
	if o.repeat > 1 && len(names) > 1 {
		order = fmt.Sprintf("%s, then alternating over %d rounds; the table shows medians", order, o.repeat)
	}
	fmt.Fprintf(table, "postgres %s, fsync=%s; systems run one after the other in this order: %s\n",
		serverVersion, fsync, order)

	runs := map[string][]*result{}
rounds:
	for round := range o.repeat {
		order := names
		if round%2 == 1 {
			order = slices.Clone(names)
			slices.Reverse(order)
		}
		if o.repeat > 1 {
			e.progress("round %d of %d, order: %s", round+1, o.repeat, strings.Join(order, ", "))
		}
		for _, name := range order {
			e.progress("running %s", name)
			r := e.runSystem(ctx, name)
			runs[name] = append(runs[name], r)
			if r.err != nil {
				e.progress("%s failed: %v", name, r.err)
			}
			if ctx.Err() != nil {
				break rounds
			}
		}
	}
	results := map[string]*result{}
	for _, name := range names {
		if len(runs[name]) == 0 {
			continue
		}
		r := combine(o, runs[name])
		if n := e.log.count(name); n > 0 {
			r.note("%s logged %d warnings/errors (first ones printed above)", name, n)
		}
		results[name] = r
	}
	printTable(table, o, names, results)
	if o.json {
		for _, name := range names {
			if r := results[name]; r != nil {
				if err := printJSON(stdout, o, r); err != nil {
					return err
				}
			}
		}
	}
	var failed []string
	for _, name := range names {
		if r := results[name]; r == nil || r.err != nil {
			failed = append(failed, name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

func describe(o options) string {
	switch o.mode {
	case "drain", "backlog":
		s := fmt.Sprintf("n=%d parallelism=%d", o.n, o.parallelism)
		if o.mode == "backlog" {
			s += fmt.Sprintf(" future rows=%d (scheduled in 24 h)", o.backlogRows)
			if o.backlogSettle {
				s += ", vacuumed and checkpointed before the timed drain"
			} else {
				s += ", drained right after their insert"
			}
		}
		return s
	case "slots":
		return fmt.Sprintf("n=%d parallelism=%d sleep=%v (ideal %.0f jobs/s)", o.n, o.parallelism, o.sleep, float64(o.parallelism)/o.sleep.Seconds())
	case "steady":
		calls := "Enqueue / Insert, one job per call"
		if o.producerTx {
			calls = "EnqueueTx / InsertTx, one job per producer transaction"
		}
		return fmt.Sprintf("producers=%d (%s) seconds=%g parallelism=%d", o.producers, calls, o.seconds, o.parallelism)
	case "latency":
		return fmt.Sprintf("50 jobs/s for %g s, one producer, parallelism=%d", o.seconds, o.parallelism)
	case "idle":
		return fmt.Sprintf("window %g s after %v settling, each system alone on its own database, parallelism=%d", o.seconds, o.settle, o.parallelism)
	}
	return ""
}

func printTable(w io.Writer, o options, names []string, results map[string]*result) {
	for _, name := range names {
		if r := results[name]; r != nil && r.settings != "" {
			fmt.Fprintf(w, "%s settings: %s\n", name, r.settings)
		}
	}
	wp, rv := results[sysPgworkpool], results[sysRiver]
	rows := [][]string{{"metric", "pgworkpool", "river", "advantage", "advantage is"}}
	for _, m := range modeMetrics[o.mode] {
		label := "  " + m.label
		if m.primary {
			label = "* " + m.label
		}
		if m.info {
			rows = append(rows, []string{label + " [context]", cell(wp, m.key), cell(rv, m.key), "-", ""})
			continue
		}
		if m.higherBetter {
			label += " [higher is better]"
		} else {
			label += " [lower is better]"
		}
		a, aok := value(wp, m.key)
		b, bok := value(rv, m.key)
		adv, how := "-", ""
		if m.higherBetter {
			how = "pgworkpool / river"
			if aok && bok && b != 0 {
				adv = ratioString(a / b)
			}
		} else {
			how = "river / pgworkpool"
			switch {
			case aok && bok && a != 0:
				adv = ratioString(b / a)
			case aok && bok && b == 0:
				adv = "1.00x"
			case aok && bok:
				adv = "inf"
			}
		}
		rows = append(rows, []string{label, cell(wp, m.key), cell(rv, m.key), adv, how})
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			switch {
			case i == 0 || i == len(r)-1:
				b.WriteString(c + pad) // text: left-aligned
			default:
				b.WriteString(pad + c) // numbers: right-aligned
			}
			if i < len(r)-1 {
				b.WriteString("  ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	fmt.Fprintln(w, "* headline metric. advantage > 1 means pgworkpool is better on that row, whichever way the metric points.")
	for _, name := range names {
		r := results[name]
		if r == nil {
			fmt.Fprintf(w, "%s: not run\n", name)
			continue
		}
		if r.err != nil {
			fmt.Fprintf(w, "%s FAILED: %v\n", name, r.err)
		}
		for _, n := range r.notes {
			fmt.Fprintf(w, "%s note: %s\n", name, n)
		}
	}
}

func value(r *result, key string) (float64, bool) {
	if r == nil || r.err != nil {
		return 0, false
	}
	v, ok := r.metrics[key]
	return v, ok && !math.IsNaN(v) && !math.IsInf(v, 0)
}

func cell(r *result, key string) string {
	switch {
	case r == nil:
		return "not run"
	case r.err != nil:
		return "FAILED"
	}
	v, ok := r.metrics[key]
	if !ok {
		return "-"
	}
	switch {
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func printJSON(w io.Writer, o options, r *result) error {
	type kv struct {
		k string
		v any
	}
	fields := []kv{{"system", r.system}, {"mode", o.mode}}
	for _, m := range modeMetrics[o.mode] {
		if v, ok := r.metrics[m.key]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
			fields = append(fields, kv{m.key, math.Round(v*1000) / 1000})
		}
	}
	switch o.mode {
	case "drain", "backlog", "slots":
		fields = append(fields, kv{"n", o.n})
	}
	fields = append(fields, kv{"parallelism", o.parallelism}, kv{"settings", r.settings})
	if r.err != nil {
		fields = append(fields, kv{"error", r.err.Error()})
	}
	if len(r.notes) > 0 {
		fields = append(fields, kv{"notes", r.notes})
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		v, err := json.Marshal(f.v)
		if err != nil {
			return err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	_, err := fmt.Fprintln(w, b.String())
	return err
}

// combine merges the rounds of one system: the median of each metric, the
// first error, every distinct note, and the per-round headline figures.
func combine(o options, runs []*result) *result {
	if len(runs) == 1 {
		return runs[0]
	}
	out := &result{system: runs[0].system, settings: runs[0].settings}
	seen := map[string]bool{}
	for _, r := range runs {
		if r.err != nil && out.err == nil {
			out.err = r.err
		}
		if r.settings != "" && out.settings == "" {
			out.settings = r.settings
		}
		for _, n := range r.notes {
			if !seen[n] {
				seen[n] = true
				out.notes = append(out.notes, n)
			}
		}
	}
	if out.err != nil {
		return out
	}
	for _, m := range modeMetrics[o.mode] {
		var vs []float64
		for _, r := range runs {
			if v, ok := r.metrics[m.key]; ok {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			continue
		}
		out.set(m.key, median(vs))
		if m.primary {
			parts := make([]string, len(vs))
			for i, v := range vs {
				parts[i] = strconv.FormatFloat(v, 'f', 3, 64)
			}
			out.note("%s per round: %s", m.key, strings.Join(parts, ", "))
		}
	}
	return out
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratioString formats an advantage, with more digits when it is tiny.
func ratioString(x float64) string {
	if x < 0.1 {
		return fmt.Sprintf("%.3fx", x)
	}
	return fmt.Sprintf("%.2fx", x)
}
