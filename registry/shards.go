package registry

import (
	"context"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/valkey-io/valkey-go"
)

// Cache freshness per shard (SPEC §4, Valkey deployments).
//
// Invariant: a cached entry is trusted past its read time only on evidence
// from the invalidation stream that would have told us of a change to its
// key. On Valkey Cluster every master is its own stream, so each master is
// a lane: its own probe (keyed into its slots with a hash tag) confirms only
// that lane, and an entry remembers the lane that owned its slot when it was
// read. An entry whose slot has since moved to another lane (failover,
// resharding) is never confirmed by the new owner, whose stream did not
// carry the writes the old one may have swallowed. Standalone and Sentinel
// are one lane (a failover there resets the connections, which flushes
// everything).
type shards struct {
	cluster atomic.Bool // set once the client knows its mode, before any read
	// slotLane holds lane index + 1 per slot; 0 while no master is known.
	slotLane [numSlots]atomic.Int32
	// gen moves whenever any slot changes lane, so views built before
	// re-check their entries.
	gen   atomic.Uint64
	lanes [maxLanes]lane

	mu     sync.Mutex // the lane table below; background only
	laneOf map[string]int32
	tags   [maxLanes]string // hash tag whose slot the lane currently owns
}

type lane struct {
	confirmed atomic.Int64 // mono time up to which its invalidations are known delivered
	sentAt    [probeSlots]atomic.Int64
}

const (
	numSlots = 16384
	maxLanes = 64 // masters; a view keeps its lanes in a uint64 mask
)

func newShards() *shards {
	s := &shards{laneOf: map[string]int32{}}
	for i := range s.lanes {
		s.lanes[i].confirmed.Store(math.MinInt64)
	}
	return s
}

// place returns the slot of key and the lane that owns it now (-1: none).
func (s *shards) place(key string) (uint16, int32) {
	if !s.cluster.Load() {
		return 0, 0
	}
	slot := keySlot(key)
	return slot, s.slotLane[slot].Load() - 1
}

// confirmedFor is the mono time up to which an entry read from lane for
// slot is known current; MinInt64 when its slot has changed lane since.
func (s *shards) confirmedFor(slot uint16, ln int32) int64 {
	if ln < 0 || (s.cluster.Load() && s.slotLane[slot].Load()-1 != ln) {
		return math.MinInt64
	}
	return s.lanes[ln].confirmed.Load()
}

// current reports whether the entry's slot is still held by the lane it
// was read from: after a move its data may have changed unseen.
func (s *shards) current(f *freshness) bool {
	return !s.cluster.Load() || (f.lane >= 0 && s.slotLane[f.slot].Load()-1 == f.lane)
}

// overdue reports whether some lane's latest probe, sent more than after
// ago, has not come back: its master may be hung or gone.
func (s *shards) overdue(rot int, after int64, now int64) bool {
	for i := range s.lanes {
		sent := s.lanes[i].sentAt[rot].Load()
		if sent != 0 && now-sent > after && s.lanes[i].confirmed.Load() < sent {
			return true
		}
	}
	return false
}

// oldest is the earliest confirmation among the lanes in mask.
func (s *shards) oldest(mask uint64) int64 {
	out := int64(math.MaxInt64)
	for mask != 0 {
		i := bits.TrailingZeros64(mask)
		out = min(out, s.lanes[i].confirmed.Load())
		mask &^= 1 << i
	}
	if out == math.MaxInt64 {
		return math.MinInt64
	}
	return out
}

// refresh reads the slot map (Cluster only) and reassigns slots to lanes.
// It reports the lanes to probe, each with the hash tag to use.
func (s *shards) refresh(ctx context.Context, c valkey.Client) (map[int32]string, error) {
	if !s.cluster.Load() {
		return map[int32]string{0: ""}, nil
	}
	ranges, err := c.Do(ctx, c.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var owner [numSlots]int32
	for _, r := range ranges {
		f, err := r.ToArray()
		if err != nil || len(f) < 3 {
			continue
		}
		lo, _ := f[0].AsInt64()
		hi, _ := f[1].AsInt64()
		node, err := f[2].ToArray()
		if err != nil || len(node) < 2 {
			continue
		}
		host, _ := node[0].ToString()
		port, _ := node[1].AsInt64()
		addr := host + ":" + strconv.FormatInt(port, 10)
		ln, ok := s.laneOf[addr]
		if !ok {
			if len(s.laneOf) >= maxLanes {
				continue // beyond maxLanes masters: those slots stay unconfirmed
			}
			ln = int32(len(s.laneOf))
			s.laneOf[addr] = ln
		}
		for slot := max(lo, 0); slot <= min(hi, numSlots-1); slot++ {
			owner[slot] = ln + 1
		}
	}
	changed := false
	for slot := range owner {
		if s.slotLane[slot].Load() != owner[slot] {
			s.slotLane[slot].Store(owner[slot])
			changed = true
		}
	}
	if changed {
		s.gen.Add(1)
	}
	probe := map[int32]string{}
	for _, ln := range s.laneOf {
		if tag := s.tags[ln]; tag == "" || s.slotLane[keySlot("{"+tag+"}")].Load() != ln+1 {
			s.tags[ln] = s.findTag(ln)
		}
		if s.tags[ln] != "" {
			probe[ln] = s.tags[ln]
		}
	}
	return probe, nil
}

// findTag finds a short hash tag whose slot lane owns ("" if none).
func (s *shards) findTag(ln int32) string {
	for i := 0; i < 4*numSlots; i++ {
		tag := strconv.Itoa(i)
		if s.slotLane[keySlot("{"+tag+"}")].Load() == ln+1 {
			return tag
		}
	}
	return ""
}

// keySlot is Valkey Cluster's slot of key: CRC16 (XMODEM) of the key, or of
// its first non-empty {hash tag}, modulo 16384.
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % numSlots
}
