package handover

import (
	"testing"

	"google.golang.org/protobuf/proto"

	handoverv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/handover/v1"
)

// fixWrittenAt sets the written_at of an encoded handover to the epoch.
func fixWrittenAt(t *testing.T, b []byte) []byte {
	t.Helper()
	var m handoverv1.Handover
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m.WrittenAt = nil
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
