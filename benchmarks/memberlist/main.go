// Command memberlist-bench is one member of a HashiCorp memberlist cluster, run
// by benchmarks/agents.py beside real hepto agents to compare the two under the
// same timing parameters. See benchmarks/README.rst for every choice made here.
//
// It talks to the harness in JSON lines: events on stdout (one object per line,
// each with "t", the wall-clock time in seconds, and "event"), commands on stdin
// ("update", "status", "leave"). End of stdin means the harness is gone: the
// member stops at once, so that no member outlives its harness.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// emitter writes one JSON object per line; memberlist calls delegates from
// several goroutines, so writes are serialised.
type emitter struct {
	mu  sync.Mutex
	out *bufio.Writer
}

func (e *emitter) emit(event string, fields map[string]any) {
	if fields == nil {
		fields = map[string]any{}
	}
	fields["event"] = event
	fields["t"] = float64(time.Now().UnixNano()) / 1e9
	line, err := json.Marshal(fields)
	if err != nil {
		line = []byte(fmt.Sprintf(`{"event":"error","error":%q}`, err.Error()))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.out.Write(line)
	e.out.WriteByte('\n')
	e.out.Flush()
}

// logWriter turns memberlist's log lines ("[INFO] memberlist: ...") into events,
// because some of them (a suspicion raised by a failed probe) are the only trace
// of what its EventDelegate does not report.
type logWriter struct {
	events *emitter
	debug  bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		level := "INFO"
		if start := strings.Index(line, "["); start >= 0 {
			if end := strings.Index(line[start:], "]"); end > 0 {
				level = line[start+1 : start+end]
				line = strings.TrimSpace(line[start+end+1:])
			}
		}
		if level == "DEBUG" && !w.debug {
			continue
		}
		w.events.emit("log", map[string]any{"level": level, "msg": line})
	}
	return len(p), nil
}

// payload is the newest version of one member's data held here.
type payload struct {
	version uint64
	data    []byte
}

// chunkSet collects the pieces of one version of a member's payload.
type chunkSet struct {
	version uint64
	pieces  [][]byte
	have    int
}

// store is the replicated state: every member's payload, newest version only.
type store struct {
	mu       sync.Mutex
	self     string
	held     map[string]payload
	partial  map[string]*chunkSet
	events   *emitter
	dropped  atomic.Int64
	received atomic.Int64
}

func newStore(self string, events *emitter) *store {
	return &store{
		self:    self,
		held:    map[string]payload{},
		partial: map[string]*chunkSet{},
		events:  events,
	}
}

// offer keeps “data“ if it is newer than what is held for “origin“.
func (s *store) offer(origin string, version uint64, data []byte, via string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offerLocked(origin, version, data, via)
}

func (s *store) offerLocked(origin string, version uint64, data []byte, via string) bool {
	if held, ok := s.held[origin]; ok && held.version >= version {
		return false
	}
	s.held[origin] = payload{version, append([]byte(nil), data...)}
	if set, ok := s.partial[origin]; ok && set.version <= version {
		delete(s.partial, origin)
	}
	s.events.emit("payload", map[string]any{
		"origin": origin, "version": version, "size": len(data), "via": via,
	})
	return true
}

// update makes a new version of this member's own payload.
func (s *store) update(size int) (uint64, []byte) {
	data := make([]byte, size)
	// Random bytes: memberlist compresses its messages, and real records
	// (keys, certificates) hardly compress.
	rand.Read(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	version := s.held[s.self].version + 1
	s.held[s.self] = payload{version, data}
	return version, data
}

func (s *store) versions() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	versions := make(map[string]uint64, len(s.held))
	for name, held := range s.held {
		versions[name] = held.version
	}
	return versions
}

// The push/pull encoding: for every member, its name, version and payload.
// Lengths are checked on the way in: a short or inconsistent buffer is
// dropped whole and counted, never half applied.

var errMalformed = errors.New("malformed state")

func (s *store) encode() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var buf bytes.Buffer
	names := make([]string, 0, len(s.held))
	for name := range s.held {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		held := s.held[name]
		binary.Write(&buf, binary.BigEndian, uint16(len(name)))
		buf.WriteString(name)
		binary.Write(&buf, binary.BigEndian, held.version)
		binary.Write(&buf, binary.BigEndian, uint32(len(held.data)))
		buf.Write(held.data)
	}
	return buf.Bytes()
}

type entry struct {
	name    string
	version uint64
	data    []byte
}

func decodeState(buf []byte) ([]entry, error) {
	var entries []entry
	for len(buf) > 0 {
		if len(buf) < 2 {
			return nil, errMalformed
		}
		nameLen := int(binary.BigEndian.Uint16(buf))
		buf = buf[2:]
		if len(buf) < nameLen+12 {
			return nil, errMalformed
		}
		name := string(buf[:nameLen])
		version := binary.BigEndian.Uint64(buf[nameLen:])
		dataLen := int(binary.BigEndian.Uint32(buf[nameLen+8:]))
		buf = buf[nameLen+12:]
		if len(buf) < dataLen {
			return nil, errMalformed
		}
		entries = append(entries, entry{name, version, buf[:dataLen]})
		buf = buf[dataLen:]
	}
	return entries, nil
}

func (s *store) merge(buf []byte) {
	entries, err := decodeState(buf)
	if err != nil {
		s.dropped.Add(1)
		s.events.emit("drop", map[string]any{"reason": err.Error(), "size": len(buf)})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range entries {
		s.offerLocked(e.name, e.version, e.data, "pushpull")
	}
}

// Chunks: a payload cut into pieces that each fit one UDP packet, gossiped
// through a TransmitLimitedQueue and relayed by every member that receives a
// piece it did not have, as Serf relays its user events.

const chunkTag = 'c'

type chunk struct {
	origin  string
	version uint64
	index   int
	count   int
	data    []byte
}

func (c chunk) encode() []byte {
	var buf bytes.Buffer
	buf.WriteByte(chunkTag)
	buf.WriteByte(byte(len(c.origin)))
	buf.WriteString(c.origin)
	binary.Write(&buf, binary.BigEndian, c.version)
	buf.WriteByte(byte(c.index))
	buf.WriteByte(byte(c.count))
	buf.Write(c.data)
	return buf.Bytes()
}

func decodeChunk(msg []byte) (chunk, error) {
	if len(msg) < 2 || msg[0] != chunkTag {
		return chunk{}, errMalformed
	}
	nameLen := int(msg[1])
	msg = msg[2:]
	if len(msg) < nameLen+10 {
		return chunk{}, errMalformed
	}
	c := chunk{
		origin:  string(msg[:nameLen]),
		version: binary.BigEndian.Uint64(msg[nameLen:]),
		index:   int(msg[nameLen+8]),
		count:   int(msg[nameLen+9]),
		data:    append([]byte(nil), msg[nameLen+10:]...),
	}
	if c.count == 0 || c.index >= c.count {
		return chunk{}, errMalformed
	}
	return c, nil
}

func split(origin string, version uint64, data []byte, size int) []chunk {
	count := (len(data) + size - 1) / size
	chunks := make([]chunk, 0, count)
	for i := 0; i < count; i++ {
		end := min((i+1)*size, len(data))
		chunks = append(chunks, chunk{origin, version, i, count, data[i*size : end]})
	}
	return chunks
}

// accept takes one piece; it tells whether the piece was new (and so worth
// relaying).
func (s *store) accept(c chunk) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if held, ok := s.held[c.origin]; ok && held.version >= c.version {
		return false
	}
	set := s.partial[c.origin]
	if set == nil || set.version < c.version {
		set = &chunkSet{version: c.version, pieces: make([][]byte, c.count)}
		s.partial[c.origin] = set
	}
	if set.version > c.version || len(set.pieces) != c.count || set.pieces[c.index] != nil {
		return false
	}
	set.pieces[c.index] = c.data
	set.have++
	if set.have == c.count {
		s.offerLocked(c.origin, c.version, bytes.Join(set.pieces, nil), "broadcast")
	}
	return true
}

// chunkBroadcast is one piece in the TransmitLimitedQueue; a newer version of
// the same piece replaces it.
type chunkBroadcast struct {
	c   chunk
	msg []byte
}

func (b *chunkBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*chunkBroadcast)
	return ok && o.c.origin == b.c.origin && o.c.index == b.c.index && o.c.version <= b.c.version
}
func (b *chunkBroadcast) Message() []byte { return b.msg }
func (b *chunkBroadcast) Finished()       {}

// delegate connects the store to memberlist.
type delegate struct {
	store      *store
	broadcasts *memberlist.TransmitLimitedQueue
	chunks     bool
}

func (d *delegate) NodeMeta(limit int) []byte { return nil }

func (d *delegate) NotifyMsg(msg []byte) {
	d.store.received.Add(1)
	c, err := decodeChunk(msg)
	if err != nil {
		d.store.dropped.Add(1)
		d.store.events.emit("drop", map[string]any{"reason": err.Error(), "size": len(msg)})
		return
	}
	if d.store.accept(c) && d.chunks {
		d.broadcasts.QueueBroadcast(&chunkBroadcast{c, c.encode()})
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	if !d.chunks {
		return nil
	}
	return d.broadcasts.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte { return d.store.encode() }

func (d *delegate) MergeRemoteState(buf []byte, join bool) { d.store.merge(buf) }

// events reports membership changes. memberlist calls it when a member
// becomes alive (join), dead or left (leave) and when its metadata changes
// (update), never for a suspicion. The Node it passes carries no usable state
// (Node.State stays zero: memberlist keeps the real one in its private
// nodeState), so a leave cannot tell a death from a departure: in these
// benchmarks nobody departs, and every leave is reported as a death.
type events struct{ out *emitter }

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.out.emit("join", map[string]any{"node": n.Name, "state": "alive"})
}
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.out.emit("leave", map[string]any{"node": n.Name, "state": "dead"})
}
func (e *events) NotifyUpdate(n *memberlist.Node) {
	e.out.emit("update", map[string]any{"node": n.Name, "state": "alive"})
}

// countingTransport is memberlist's own NetTransport with a count of the bytes
// it sends and receives (encrypted payloads, without IP and UDP/TCP headers).
type countingTransport struct {
	*memberlist.NetTransport
	packets                            chan *memberlist.Packet
	streams                            chan net.Conn
	udpSent, udpReceived               atomic.Int64
	tcpSent, tcpReceived               atomic.Int64
	udpPacketsSent, udpPacketsReceived atomic.Int64
}

func newCountingTransport(inner *memberlist.NetTransport) *countingTransport {
	t := &countingTransport{
		NetTransport: inner,
		packets:      make(chan *memberlist.Packet),
		streams:      make(chan net.Conn),
	}
	go func() {
		for packet := range inner.PacketCh() {
			t.udpReceived.Add(int64(len(packet.Buf)))
			t.udpPacketsReceived.Add(1)
			t.packets <- packet
		}
	}()
	go func() {
		for conn := range inner.StreamCh() {
			t.streams <- &countingConn{conn, t}
		}
	}()
	return t
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.udpSent.Add(int64(len(b)))
	t.udpPacketsSent.Add(1)
	return t.NetTransport.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *countingTransport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := t.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{conn, t}, nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

func (t *countingTransport) counters() map[string]int64 {
	return map[string]int64{
		"udp_sent": t.udpSent.Load(), "udp_received": t.udpReceived.Load(),
		"udp_packets_sent": t.udpPacketsSent.Load(), "udp_packets_received": t.udpPacketsReceived.Load(),
		"tcp_sent": t.tcpSent.Load(), "tcp_received": t.tcpReceived.Load(),
	}
}

type countingConn struct {
	net.Conn
	t *countingTransport
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.tcpReceived.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.tcpSent.Add(int64(n))
	return n, err
}

// joinAddress accepts "ADDR", "[ADDR]" or "[ADDR]:PORT" and gives "[ADDR]:PORT".
func joinAddress(text string, port int) string {
	if _, _, err := net.SplitHostPort(text); err == nil {
		return text
	}
	return net.JoinHostPort(strings.Trim(text, "[]"), strconv.Itoa(port))
}

func main() {
	name := flag.String("name", "", "member name (required)")
	bind := flag.String("bind", "", "IPv6 (or IPv4) address to bind and advertise (required)")
	port := flag.Int("port", 7946, "UDP and TCP port")
	join := flag.String("join", "", "comma-separated addresses to join through ([ADDR]:PORT or ADDR)")
	keyHex := flag.String("key", "", "hex AES key of 16, 24 or 32 bytes (required: encryption is always on)")
	label := flag.String("label", "bench", "memberlist label, bound to every packet and stream (the cluster name)")
	size := flag.Int("payload-size", 4096, "bytes of this member's payload")
	chunkSize := flag.Int("chunk-size", 1024, "bytes of payload per broadcast piece (with -chunks)")
	chunks := flag.Bool("chunks", false, "also gossip payload changes as pieces through a TransmitLimitedQueue")
	debug := flag.Bool("debug", false, "also report memberlist's DEBUG log lines")
	flag.Parse()

	out := &emitter{out: bufio.NewWriter(os.Stdout)}
	fail := func(format string, args ...any) {
		out.emit("error", map[string]any{"error": fmt.Sprintf(format, args...)})
		os.Exit(2)
	}
	if *name == "" || *bind == "" || *keyHex == "" {
		fail("-name, -bind and -key are required")
	}
	key, err := hex.DecodeString(*keyHex)
	if err != nil {
		fail("-key: %v", err)
	}
	if len(key) > 32 {
		// Hepto's keys may be longer than AES takes: use their first 32 bytes.
		key = key[:32]
	}
	if *chunkSize < 1 || *chunkSize > 1200 || (*size+*chunkSize-1)/(*chunkSize) > 255 {
		fail("-chunk-size must be 1..1200 and cut the payload into at most 255 pieces")
	}

	config := memberlist.DefaultLANConfig()
	config.Name = *name
	config.BindAddr = *bind
	config.BindPort = *port
	config.AdvertiseAddr = *bind
	config.AdvertisePort = *port
	config.SecretKey = key
	config.Label = *label
	logs := &logWriter{out, *debug}
	config.LogOutput = logs

	inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{*bind},
		BindPort:  *port,
		Logger:    log.New(logs, "", 0),
	})
	if err != nil {
		fail("transport: %v", err)
	}
	transport := newCountingTransport(inner)
	config.Transport = transport

	state := newStore(*name, out)
	version, data := state.update(*size)
	d := &delegate{store: state, chunks: *chunks}
	config.Delegate = d
	config.Events = &events{out}

	list, err := memberlist.Create(config)
	if err != nil {
		fail("create: %v", err)
	}
	d.broadcasts = &memberlist.TransmitLimitedQueue{
		NumNodes:       list.NumMembers,
		RetransmitMult: config.RetransmitMult,
	}
	out.emit("ready", map[string]any{
		"name": *name, "address": *bind, "port": *port, "version": version, "size": len(data),
		"chunks": *chunks, "probe_interval": config.ProbeInterval.Seconds(),
		"probe_timeout": config.ProbeTimeout.Seconds(), "gossip_interval": config.GossipInterval.Seconds(),
		"gossip_nodes": config.GossipNodes, "suspicion_mult": config.SuspicionMult,
		"retransmit_mult": config.RetransmitMult, "push_pull_interval": config.PushPullInterval.Seconds(),
	})

	var peers []string
	for _, peer := range strings.Split(*join, ",") {
		if peer = strings.TrimSpace(peer); peer != "" {
			peers = append(peers, joinAddress(peer, *port))
		}
	}
	// Room for every sender (join never sends, commands, signals): none blocks.
	stop := make(chan string, 2)
	go joinWithBackoff(list, peers, out, stop)
	go readCommands(os.Stdin, list, state, d, *size, *chunkSize, transport, out, stop)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { stop <- "leave:" + (<-signals).String() }()

	reason := <-stop
	if strings.HasPrefix(reason, "leave") {
		if err := list.Leave(5 * time.Second); err != nil {
			out.emit("log", map[string]any{"level": "WARN", "msg": "leave: " + err.Error()})
		}
	}
	list.Shutdown()
	out.emit("stopped", map[string]any{"reason": reason})
}

// joinWithBackoff retries until one peer answers: members start in any order.
func joinWithBackoff(list *memberlist.Memberlist, peers []string, out *emitter, stop chan<- string) {
	if len(peers) == 0 {
		return
	}
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		joined, err := list.Join(peers)
		if err == nil {
			out.emit("joined", map[string]any{"contacted": joined, "attempts": attempt})
			return
		}
		out.emit("log", map[string]any{"level": "WARN", "msg": "join: " + err.Error()})
		time.Sleep(delay)
		delay = min(2*delay, 5*time.Second)
	}
}

func readCommands(
	in io.Reader, list *memberlist.Memberlist, state *store, d *delegate, size, chunkSize int,
	transport *countingTransport, out *emitter, stop chan<- string,
) {
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		switch command := strings.TrimSpace(lines.Text()); command {
		case "update":
			version, data := state.update(size)
			if d.chunks {
				for _, c := range split(state.self, version, data, chunkSize) {
					d.broadcasts.QueueBroadcast(&chunkBroadcast{c, c.encode()})
				}
			}
			out.emit("updated", map[string]any{"version": version, "size": len(data)})
		case "status":
			out.emit("status", status(list, state, d, transport))
		case "leave":
			stop <- "leave"
			return
		case "":
		default:
			out.emit("error", map[string]any{"error": "unknown command " + strconv.Quote(command)})
		}
	}
	stop <- "end of input"
}

func status(list *memberlist.Memberlist, state *store, d *delegate, transport *countingTransport) map[string]any {
	var members []map[string]any
	// Members() lists those neither dead nor departed: alive or suspected.
	for _, n := range list.Members() {
		members = append(members, map[string]any{
			"name": n.Name, "address": n.Addr.String(), "state": "reachable",
		})
	}
	sort.Slice(members, func(i, j int) bool { return members[i]["name"].(string) < members[j]["name"].(string) })
	queued := 0
	if d.broadcasts != nil {
		queued = d.broadcasts.NumQueued()
	}
	return map[string]any{
		"members":   members,
		"health":    list.GetHealthScore(),
		"versions":  state.versions(),
		"bytes":     transport.counters(),
		"dropped":   state.dropped.Load(),
		"user_msgs": state.received.Load(),
		"queued":    queued,
	}
}
