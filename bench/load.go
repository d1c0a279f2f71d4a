package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// httpConn is one keep-alive HTTP/1.1 connection written by hand: the load
// generator shares the cores with what it measures, so it spends as little CPU
// per request as it can (no client pool, no goroutine per connection).
type httpConn struct {
	c    net.Conn
	br   *bufio.Reader
	buf  []byte
	host string // the Host header: the address dialed
	// header is more header lines, each ending in \r\n (Centrifugo's API
	// key); empty for the gateway.
	header string
}

func dialHTTP(addr string) (*httpConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &httpConn{c: c, br: bufio.NewReaderSize(c, 4096), buf: make([]byte, 0, 2048), host: addr}, nil
}

// post sends one JSON POST and reads the whole answer.
func (h *httpConn) post(path string, body []byte) (int, error) {
	b := h.buf[:0]
	b = append(b, "POST "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, h.host...)
	b = append(b, "\r\n"...)
	b = append(b, h.header...)
	b = append(b, "Content-Type: application/json\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	h.buf = b
	if _, err := h.c.Write(b); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
}

func (h *httpConn) close() { h.c.Close() }

// request builds worker w's i-th request into buf.
type request func(w, i int, buf []byte) (path string, body []byte)

// loadResult is what a load run measured.
type loadResult struct {
	ops      int
	failures int // non-2xx answers
	took     time.Duration
	lat      samples // sorted
}

func (r loadResult) rate() float64 { return float64(r.ops) / r.took.Seconds() }

// add combines two windows of the same load.
func (r loadResult) add(o loadResult) loadResult {
	all := append(slices.Clone(r.lat), o.lat...)
	slices.Sort(all)
	return loadResult{ops: r.ops + o.ops, failures: r.failures + o.failures, took: r.took + o.took, lat: all}
}

// closedLoop keeps conns connections busy for d (or until limit requests when
// limit > 0), each sending its next request as soon as the previous one is
// answered, and times every request.
func closedLoop(ctx context.Context, addr string, conns int, d time.Duration, limit int, next request) (loadResult, error) {
	if limit > 0 {
		d = 24 * time.Hour
	}
	var sent atomic.Int64
	cs := make([]*httpConn, conns)
	for i := range cs {
		c, err := dialHTTP(addr)
		if err != nil {
			return loadResult{}, err
		}
		defer c.close()
		cs[i] = c
	}
	parts := make([]samples, conns)
	fails := make([]int, conns)
	errs := make([]error, conns)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w, c := range cs {
		wg.Go(func() {
			lat := make(samples, 0, 1<<14)
			buf := make([]byte, 0, 2048)
			for i := 0; ctx.Err() == nil; i++ {
				if time.Now().After(deadline) || (limit > 0 && sent.Add(1) > int64(limit)) {
					break
				}
				path, body := next(w, i, buf)
				t0 := time.Now()
				code, err := c.post(path, body)
				if err != nil {
					errs[w] = fmt.Errorf("connection %d: %w", w, err)
					break
				}
				lat = append(lat, time.Since(t0))
				if code/100 != 2 {
					fails[w]++
				}
			}
			parts[w] = lat
		})
	}
	wg.Wait()
	took := time.Since(start)
	res := loadResult{took: took, lat: merge(parts)}
	res.ops = len(res.lat)
	for w := range cs {
		res.failures += fails[w]
		if errs[w] != nil {
			return res, errs[w]
		}
	}
	return res, ctx.Err()
}
