// Command goyamux is the independent yamux peer for relay's interop tests.
//
// It runs one hashicorp/yamux session over a single TCP connection on the loopback
// interface and plays one scenario against relay_native (driven from Python by
// tests/interop/yamux_driver.py).
//
// Stream protocol: whoever opens a stream first writes a 16-byte header,
// big-endian: op [4]byte | size uint64 | a uint16 | b uint16. The accepting side
// serves the op:
//
//	ECHO  echo every byte as it arrives; FIN after the peer's FIN
//	AFTR  read until FIN, then write everything back, then FIN
//	DPLX  at once write size random bytes Q, sha256(Q), and, after reading the
//	      peer's payload P until FIN: sha256(P), len(P) as uint64; then FIN.
//	      a: minimum duration (ms) the write of Q must have taken (0: none);
//	      b: delay (ms) before the first read
//	RSTR  read and write until the peer resets; both must fail with a reset
//	CLTO  read size bytes, then Close (FIN) and stop reading: the session's
//	      StreamCloseTimeout makes hashicorp reset the stream
//	GAWL  read the 5-byte marker "AFTER" (the peer sent GoAway before it): our
//	      OpenStream must now fail with ErrRemoteGoAway; then echo like ECHO
//	GAWR  send GoAway, then the marker "AFTER", then echo like ECHO
//	CTRL  (opened by goyamux at start) the peer reads the verdict "OK" then FIN
//
// Exit status: 0 after the scenario passed and the peer closed the connection;
// 1 on a check failure; 2 on bad usage; 3 when the hard deadline passed.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const headerLen = 16

type streamHeader struct {
	op   string
	size uint64
	a, b uint16
}

func (h streamHeader) encode() []byte {
	buf := make([]byte, headerLen)
	copy(buf[0:4], h.op)
	binary.BigEndian.PutUint64(buf[4:12], h.size)
	binary.BigEndian.PutUint16(buf[12:14], h.a)
	binary.BigEndian.PutUint16(buf[14:16], h.b)
	return buf
}

func readHeader(r io.Reader) (streamHeader, error) {
	buf := make([]byte, headerLen)
	if _, err := io.ReadFull(r, buf); err != nil {
		return streamHeader{}, fmt.Errorf("reading stream header: %w", err)
	}
	return streamHeader{
		op:   string(buf[0:4]),
		size: binary.BigEndian.Uint64(buf[4:12]),
		a:    binary.BigEndian.Uint16(buf[12:14]),
		b:    binary.BigEndian.Uint16(buf[14:16]),
	}, nil
}

var (
	rngMu sync.Mutex
	rng   *rand.Rand
)

func randomBytes(n int) []byte {
	buf := make([]byte, n)
	rngMu.Lock()
	defer rngMu.Unlock()
	_, _ = rng.Read(buf)
	return buf
}

func randomSize(max int) int {
	rngMu.Lock()
	defer rngMu.Unlock()
	var b [8]byte
	_, _ = rng.Read(b[:])
	return int(binary.LittleEndian.Uint64(b[:]) % uint64(max+1))
}

type peer struct {
	sess *yamux.Session
	log  *log.Logger
}

// fail ends the program at once: the Python side sees the connection drop and
// reports our stderr.
func (p *peer) fail(format string, args ...any) {
	p.log.Printf("FAIL: "+format, args...)
	os.Exit(1)
}

// serve accepts exactly n streams opened by the peer and serves each by its op.
// It returns the first error of any handler, after all n have finished.
func (p *peer) serve(n int) <-chan error {
	done := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			st, err := p.sess.AcceptStream()
			if err != nil {
				errs <- fmt.Errorf("accept stream %d of %d: %w", i+1, n, err)
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.handle(st); err != nil {
					errs <- fmt.Errorf("stream %d: %w", st.StreamID(), err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		done <- <-errs // nil when no handler failed
	}()
	return done
}

func (p *peer) handle(st *yamux.Stream) error {
	h, err := readHeader(st)
	if err != nil {
		return err
	}
	p.log.Printf("stream %d: op %s size %d a %d b %d", st.StreamID(), h.op, h.size, h.a, h.b)
	switch h.op {
	case "ECHO":
		return echo(st)
	case "AFTR":
		return echoAfterFin(st)
	case "DPLX":
		return duplex(st, h)
	case "RSTR":
		return expectReset(st)
	case "CLTO":
		if _, err := io.ReadFull(st, make([]byte, h.size)); err != nil {
			return fmt.Errorf("CLTO read: %w", err)
		}
		return st.Close() // FIN now; StreamCloseTimeout sends the RST later
	case "GAWL":
		if err := expectMarker(st); err != nil {
			return err
		}
		if s, err := p.sess.OpenStream(); !errors.Is(err, yamux.ErrRemoteGoAway) {
			if s != nil {
				s.Close()
			}
			return fmt.Errorf("OpenStream after the peer's GoAway: got %v, want ErrRemoteGoAway", err)
		}
		p.log.Printf("OpenStream after remote GoAway failed as expected")
		return echo(st)
	case "GAWR":
		if err := p.sess.GoAway(); err != nil {
			return fmt.Errorf("GoAway: %w", err)
		}
		if _, err := st.Write([]byte("AFTER")); err != nil {
			return fmt.Errorf("marker write: %w", err)
		}
		return echo(st)
	}
	return fmt.Errorf("unknown op %q", h.op)
}

func echo(st *yamux.Stream) error {
	if _, err := io.Copy(st, st); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	return st.Close()
}

func echoAfterFin(st *yamux.Stream) error {
	data, err := io.ReadAll(st)
	if err != nil {
		return fmt.Errorf("AFTR read: %w", err)
	}
	// The peer has half-closed: writing back must still work.
	if _, err := st.Write(data); err != nil {
		return fmt.Errorf("AFTR write after peer FIN: %w", err)
	}
	return st.Close()
}

func expectMarker(st *yamux.Stream) error {
	buf := make([]byte, 5)
	if _, err := io.ReadFull(st, buf); err != nil {
		return fmt.Errorf("marker read: %w", err)
	}
	if string(buf) != "AFTER" {
		return fmt.Errorf("marker %q", buf)
	}
	return nil
}

type readResult struct {
	sum [32]byte
	n   int64
	err error
}

func duplex(st *yamux.Stream, h streamHeader) error {
	q := randomBytes(int(h.size))
	results := make(chan readResult, 1)
	go func() {
		time.Sleep(time.Duration(h.b) * time.Millisecond)
		hh := sha256.New()
		n, err := io.Copy(hh, st)
		var r readResult
		copy(r.sum[:], hh.Sum(nil))
		r.n, r.err = n, err
		results <- r
	}()
	start := time.Now()
	if _, err := st.Write(q); err != nil {
		return fmt.Errorf("DPLX write of %d bytes: %w", len(q), err)
	}
	took := time.Since(start)
	if paused := time.Duration(h.a) * time.Millisecond; took < paused {
		return fmt.Errorf("DPLX write of %d bytes finished after %v, but the reader was paused for %v: flow control not honoured", len(q), took, paused)
	}
	sumQ := sha256.Sum256(q)
	if _, err := st.Write(sumQ[:]); err != nil {
		return fmt.Errorf("DPLX digest write: %w", err)
	}
	r := <-results
	if r.err != nil {
		return fmt.Errorf("DPLX read: %w", r.err)
	}
	trailer := make([]byte, 40)
	copy(trailer, r.sum[:])
	binary.BigEndian.PutUint64(trailer[32:], uint64(r.n))
	if _, err := st.Write(trailer); err != nil {
		return fmt.Errorf("DPLX trailer write: %w", err)
	}
	return st.Close()
}

func expectReset(st *yamux.Stream) error {
	writeErr := make(chan error, 1)
	go func() {
		chunk := randomBytes(64 * 1024)
		for i := 0; i < 4096; i++ { // at most 256 MiB: the peer resets long before
			if _, err := st.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- errors.New("wrote 256 MiB without seeing the reset")
	}()
	n, err := io.Copy(io.Discard, st)
	if !errors.Is(err, yamux.ErrConnectionReset) {
		return fmt.Errorf("RSTR read: after %d bytes got %v, want ErrConnectionReset", n, err)
	}
	if n == 0 {
		return errors.New("RSTR read: no data before the reset")
	}
	if werr := <-writeErr; !errors.Is(werr, yamux.ErrConnectionReset) {
		return fmt.Errorf("RSTR write: got %v, want ErrConnectionReset", werr)
	}
	return nil
}

// openChecked opens a stream with op ECHO or AFTR, writes data, and checks that
// exactly the same bytes come back. With closeFirst the FIN is sent right after
// the data and the echo is read afterwards (a read after a local Close).
func (p *peer) openChecked(op string, data []byte) error {
	st, err := p.sess.OpenStream()
	if err != nil {
		return fmt.Errorf("OpenStream: %w", err)
	}
	return checkEcho(st, op, data)
}

func checkEcho(st *yamux.Stream, op string, data []byte) error {
	want := sha256.Sum256(data)
	results := make(chan readResult, 1)
	go func() {
		hh := sha256.New()
		n, err := io.Copy(hh, st)
		var r readResult
		copy(r.sum[:], hh.Sum(nil))
		r.n, r.err = n, err
		results <- r
	}()
	if _, err := st.Write(append(streamHeader{op: op, size: uint64(len(data))}.encode(), data...)); err != nil {
		return fmt.Errorf("stream %d write: %w", st.StreamID(), err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("stream %d close: %w", st.StreamID(), err)
	}
	r := <-results
	if r.err != nil {
		return fmt.Errorf("stream %d read after local close: %w", st.StreamID(), r.err)
	}
	if r.n != int64(len(data)) || !bytes.Equal(r.sum[:], want[:]) {
		return fmt.Errorf("stream %d (%s): sent %d bytes, got back %d, hashes match: %v",
			st.StreamID(), op, len(data), r.n, bytes.Equal(r.sum[:], want[:]))
	}
	return nil
}

func (p *peer) openMany(op string, n, maxSize int) <-chan error {
	done := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		payloads := make([][]byte, n)
		for i := range payloads {
			payloads[i] = randomBytes(randomSize(maxSize))
		}
		start := make(chan struct{}) // all OpenStream calls race, as in a busy Go program
		for _, data := range payloads {
			wg.Add(1)
			go func(data []byte) {
				defer wg.Done()
				<-start
				if err := p.openChecked(op, data); err != nil {
					errs <- err
				}
			}(data)
		}
		close(start)
		wg.Wait()
		close(errs)
		done <- <-errs
	}()
	return done
}

func (p *peer) must(what string, err error) {
	if err != nil {
		p.fail("%s: %v", what, err)
	}
}

func (p *peer) run(scenario string, n int) {
	switch scenario {
	case "bidi":
		// The peer opens n ECHO streams; we open n ECHO streams and check them.
		served, opened := p.serve(n), p.openMany("ECHO", n, 300*1024)
		p.must("streams opened by the peer", <-served)
		p.must("streams we opened", <-opened)
	case "concurrent", "reset", "slow", "bulk":
		p.must("streams opened by the peer", <-p.serve(n))
	case "halfclose":
		served := p.serve(n)
		p.must("AFTR stream we opened", p.openChecked("AFTR", randomBytes(700*1024)))
		p.must("streams opened by the peer", <-served)
	case "ping":
		for i := 0; i < 3; i++ {
			rtt, err := p.sess.Ping()
			p.must(fmt.Sprintf("ping %d", i+1), err)
			if rtt <= 0 {
				p.fail("ping %d: rtt %v", i+1, rtt)
			}
			p.log.Printf("ping %d: rtt %v", i+1, rtt)
		}
		// Several pings in flight at once: hashicorp matches every answer to its
		// own ping id, so each one needs its own answer.
		for round := 0; round < 3; round++ {
			errs := make(chan error, 4)
			for i := 0; i < 4; i++ {
				go func() {
					_, err := p.sess.Ping()
					errs <- err
				}()
			}
			for i := 0; i < 4; i++ {
				p.must(fmt.Sprintf("concurrent ping round %d", round+1), <-errs)
			}
		}
		// Let the keepalive (every 100 ms) ping a few more times; it ends the
		// session if an answer is missing.
		time.Sleep(800 * time.Millisecond)
		if p.sess.IsClosed() {
			p.fail("session closed during keepalive pings")
		}
	case "goaway_local":
		// One stream of ours before the peer's GoAway; it must keep working after.
		mine := make(chan error, 1)
		st, err := p.sess.OpenStream()
		p.must("OpenStream before GoAway", err)
		go func() {
			// Announce the stream, wait for the peer's GoAway (seen by the GAWL handler).
			_, err := st.Write(streamHeader{op: "ECHO"}.encode())
			mine <- err
		}()
		p.must("announce ECHO stream", <-mine)
		p.must("GAWL stream opened by the peer", <-p.serve(n))
		data := randomBytes(200 * 1024)
		go func() {
			_, err := st.Write(data)
			if err == nil {
				err = st.Close()
			}
			mine <- err
		}()
		back, err := io.ReadAll(st)
		p.must("read echo after GoAway", err)
		p.must("write after GoAway", <-mine)
		if !bytes.Equal(back, data) {
			p.fail("echo after GoAway: sent %d bytes, got %d back (equal: false)", len(data), len(back))
		}
	case "goaway_remote":
		// A stream of ours, and the peer's GAWR stream on which we send GoAway.
		// Ours is opened before our GoAway goes out.
		st, err := p.sess.OpenStream()
		p.must("OpenStream before GoAway", err)
		mine := make(chan error, 1)
		go func() { mine <- checkEcho(st, "ECHO", randomBytes(200*1024)) }()
		p.must("GAWR stream opened by the peer", <-p.serve(n))
		p.must("stream we opened", <-mine)
	default:
		p.log.Printf("unknown scenario %q", scenario)
		os.Exit(2)
	}
}

func main() {
	listen := flag.String("listen", "", "listen on this address (e.g. 127.0.0.1:0), print the port, accept one connection")
	dial := flag.String("dial", "", "dial this address instead of listening")
	role := flag.String("role", "client", "yamux role: client (odd stream ids) or server (even)")
	scenario := flag.String("scenario", "", "scenario name")
	n := flag.Int("n", 1, "number of streams the peer opens (and, for bidi, that we open)")
	timeout := flag.Duration("timeout", 60*time.Second, "hard deadline for the whole run")
	window := flag.Uint("window", 256*1024, "MaxStreamWindowSize")
	keepalive := flag.Duration("keepalive", 0, "keepalive interval (0: off)")
	closeTimeout := flag.Duration("close-timeout", 30*time.Second, "StreamCloseTimeout")
	writeTimeout := flag.Duration("write-timeout", 10*time.Second, "ConnectionWriteTimeout (also the Ping timeout)")
	seed := flag.Int64("seed", 1, "payload seed")
	flag.Parse()

	logger := log.New(os.Stderr, "goyamux: ", log.Lmicroseconds)
	if (*listen == "") == (*dial == "") || *scenario == "" || (*role != "client" && *role != "server") {
		logger.Printf("usage: goyamux (-listen ADDR | -dial ADDR) -role client|server -scenario NAME")
		os.Exit(2)
	}
	rng = rand.New(rand.NewSource(*seed))

	time.AfterFunc(*timeout, func() {
		logger.Printf("FAIL: deadline of %v passed (scenario %s)", *timeout, *scenario)
		os.Exit(3)
	})

	var conn net.Conn
	var err error
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			logger.Printf("FAIL: listen: %v", err)
			os.Exit(1)
		}
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		conn, err = ln.Accept()
		if err != nil {
			logger.Printf("FAIL: accept: %v", err)
			os.Exit(1)
		}
		ln.Close()
	} else if conn, err = net.Dial("tcp", *dial); err != nil {
		logger.Printf("FAIL: dial: %v", err)
		os.Exit(1)
	}

	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	cfg.EnableKeepAlive = *keepalive > 0
	if *keepalive > 0 {
		cfg.KeepAliveInterval = *keepalive
	}
	cfg.ConnectionWriteTimeout = *writeTimeout
	cfg.StreamOpenTimeout = 10 * time.Second
	cfg.StreamCloseTimeout = *closeTimeout
	cfg.MaxStreamWindowSize = uint32(*window)

	var sess *yamux.Session
	if *role == "client" {
		sess, err = yamux.Client(conn, cfg)
	} else {
		sess, err = yamux.Server(conn, cfg)
	}
	if err != nil {
		logger.Printf("FAIL: yamux session: %v", err)
		os.Exit(1)
	}
	p := &peer{sess: sess, log: logger}

	// The control stream carries the verdict; it is opened before anything else.
	ctrl, err := sess.OpenStream()
	p.must("open control stream", err)
	_, err = ctrl.Write(streamHeader{op: "CTRL"}.encode())
	p.must("write control header", err)

	start := time.Now()
	p.run(*scenario, *n)
	logger.Printf("scenario %s passed in %v", *scenario, time.Since(start).Round(time.Millisecond))

	_, err = ctrl.Write([]byte("OK"))
	p.must("write verdict", err)
	p.must("close control stream", ctrl.Close())
	// The Python side closes the connection once it has checked everything.
	<-sess.CloseChan()
	os.Exit(0)
}
