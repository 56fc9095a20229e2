// Package spec owns what a plugincontrol.v1.PluginSpec means: its one
// canonical form, its validation, its digest and the difference between
// two specs. Every place that compares or records specs goes through it:
// the daemon (what it stores and reports), the fleet (digests of desired
// and running specs), and pluginctl's get, diff and apply. Two specs that
// mean the same plugin have the same canonical form, so applying what get
// printed changes nothing.
//
// The canonical form is the spec as the daemon keeps it: every field
// parsed and checked by the manager's rules (manager.Spec.Validate), then
// written back with one spelling per meaning. A zero duration is unset; an
// empty health policy, resources or handshake are unset; the unhealthy
// action NONE is UNSPECIFIED (both mean none). Values equal to a default
// are kept as written: a default may change between versions, a value the
// operator wrote does not.
package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/wire"
)

// Canonical returns s in canonical form, or an error naming the first
// field that is wrong (a *manager.InvalidError).
func Canonical(s *pb.PluginSpec) (*pb.PluginSpec, error) {
	m, err := wire.Spec(s)
	if err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return wire.SpecProto(m), nil
}

// Equal reports whether a and b mean the same plugin: their canonical
// forms are equal. Specs that are not valid are compared as written.
func Equal(a, b *pb.PluginSpec) bool {
	ca, errA := Canonical(a)
	cb, errB := Canonical(b)
	if errA != nil || errB != nil {
		return proto.Equal(a, b)
	}
	return proto.Equal(ca, cb)
}

// Digest is the hex SHA-256 of s's deterministic encoding. Digest a
// canonical spec (Canonical) so that equal specs have equal digests.
func Digest(s *pb.PluginSpec) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Diff lists the top-level fields whose canonical values differ from a to
// b, as "field: old → new" with the values in compact protojson ("(unset)"
// for an absent one, values cut to 60 characters), sorted by field name.
// It is empty when Equal(a, b).
func Diff(a, b *pb.PluginSpec) []string {
	if ca, err := Canonical(a); err == nil {
		a = ca
	}
	if cb, err := Canonical(b); err == nil {
		b = cb
	}
	ma, mb := fields(a), fields(b)
	keys := make([]string, 0, len(ma)+len(mb))
	for k := range ma {
		keys = append(keys, k)
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		va, vb := ma[k], mb[k]
		if va != vb {
			out = append(out, fmt.Sprintf("%s: %s → %s", k, shorten(va), shorten(vb)))
		}
	}
	return out
}

// compact is protojson on one line with proto field names (as pluginctl
// get prints specs).
var compact = protojson.MarshalOptions{UseProtoNames: true}

// fields is the compact protojson of each set field of s.
func fields(s *pb.PluginSpec) map[string]string {
	b, _ := compact.Marshal(s)
	raw := map[string]json.RawMessage{}
	_ = json.Unmarshal(b, &raw)
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		// Re-encoded: protojson's spacing is deliberately unstable.
		var x any
		if json.Unmarshal(v, &x) == nil {
			if c, err := json.Marshal(x); err == nil {
				out[k] = string(c)
				continue
			}
		}
		out[k] = string(v)
	}
	return out
}

func shorten(v string) string {
	if v == "" {
		return "(unset)"
	}
	if len(v) > 60 {
		return v[:59] + "…"
	}
	return v
}
