package endpoint

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// frame is one message in flight through a forwarder, never decoded: the
// bytes grpc-go read from one side, handed as they are to the other.
type frame struct{ data mem.BufferSlice }

// codec moves frames without decoding them. It keeps the buffers grpc-go
// read (one reference) and hands that reference back on the way out, so a
// message is not copied between the two connections.
type codec struct{}

// Name is "proto": with ForceCodecV2 the name becomes the content-subtype
// of the upstream call unless the caller's own is set with
// CallContentSubtype, and every gRPC implementation accepts "proto".
func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("endpoint codec: cannot marshal %T", v)
	}
	// grpc-go frees what Marshal returns once written: the reference taken
	// in Unmarshal moves to it.
	d := f.data
	f.data = nil
	return d, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("endpoint codec: cannot unmarshal into %T", v)
	}
	// grpc-go frees data when Unmarshal returns: keep a reference of our
	// own until Marshal hands it back.
	data.Ref()
	f.data = data
	return nil
}
