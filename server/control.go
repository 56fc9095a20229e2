package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/internal/wire"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	protobuf "google.golang.org/protobuf/proto"
)

// control implements PluginControlService: validate and map, then call the
// manager; no lifecycle decisions here.
type control struct {
	pb.UnimplementedPluginControlServiceServer
	s *Server
}

func (c *control) Load(ctx context.Context, req *pb.LoadRequest) (*pb.LoadResponse, error) {
	spec, err := specFromProto(req.GetSpec())
	if err != nil {
		return nil, err
	}
	if err := c.s.fleetManaged(spec.Name); err != nil {
		return nil, err
	}
	res, err := c.s.m.Load(ctx, spec)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.LoadResponse{Plugin: c.s.withFleetKey(statusToProto(res.Status)), Report: reportToProto(res.Report)}, nil
}

func (c *control) Reload(ctx context.Context, req *pb.ReloadRequest) (*pb.ReloadResponse, error) {
	drain, err := duration("drain_timeout", req.GetDrainTimeout())
	if err != nil {
		return nil, err
	}
	if err := c.s.fleetManaged(req.GetName()); err != nil {
		return nil, err
	}
	mr := manager.ReloadRequest{
		Name:               req.GetName(),
		ExpectedGeneration: req.GetExpectedGeneration(),
		ValidateOnly:       req.GetValidateOnly(),
		DrainTimeout:       drain,
	}
	if b := req.GetBake(); b != nil {
		// Set: 0s means no bake, even when the daemon has a default.
		if mr.Bake, err = duration("bake", b); err != nil {
			return nil, err
		}
		if mr.Bake == 0 {
			mr.Bake = manager.NoBake
		}
	}
	if req.GetSpec() != nil {
		spec, err := specFromProto(req.GetSpec())
		if err != nil {
			return nil, err
		}
		mr.Spec = &spec
	}
	res, err := c.s.m.Reload(ctx, mr)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReloadResponse{
		Plugin:             c.s.withFleetKey(statusToProto(res.Status)),
		PreviousGeneration: res.PreviousGeneration,
		Report:             reportToProto(res.Report),
	}, nil
}

func (c *control) Unload(ctx context.Context, req *pb.UnloadRequest) (*pb.UnloadResponse, error) {
	drain, err := duration("drain_timeout", req.GetDrainTimeout())
	if err != nil {
		return nil, err
	}
	if err := c.s.fleetManaged(req.GetName()); err != nil {
		return nil, err
	}
	st, err := c.s.m.Unload(ctx, req.GetName(), drain)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.UnloadResponse{Plugin: statusToProto(st)}, nil
}

// ListPlugins pages by name: the token is the last name listed, so a
// listing neither repeats nor skips a plugin that stays loaded while it is
// paged through.
func (c *control) ListPlugins(_ context.Context, req *pb.ListPluginsRequest) (*pb.ListPluginsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = maxPluginPage
	case size > maxPluginPage:
		return nil, invalid("page_size", fmt.Sprintf("%d is more than %d", size, maxPluginPage))
	}
	after, err := decodePluginToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	basic := false
	switch req.GetView() {
	case pb.PluginView_PLUGIN_VIEW_UNSPECIFIED, pb.PluginView_PLUGIN_VIEW_FULL:
	case pb.PluginView_PLUGIN_VIEW_BASIC:
		basic = true
	default:
		return nil, invalid("view", fmt.Sprintf("unknown value %d", req.GetView()))
	}
	list, err := c.listed(req.GetNames())
	if err != nil {
		return nil, err
	}
	i := sort.Search(len(list), func(i int) bool { return list[i].Name > after })
	budget := min(c.s.opts.maxRecvBytes, maxPluginPageBytes) - pluginTokenReserve
	out := &pb.ListPluginsResponse{}
	used := 0
	for ; i < len(list) && len(out.Plugins) < size; i++ {
		st := c.s.withFleetKey(statusToProto(list[i]))
		if basic {
			st.Spec = nil
		}
		n := protobuf.Size(st)
		n += 1 + protowire.SizeVarint(uint64(n))
		if used+n > budget {
			if len(out.Plugins) == 0 {
				return nil, rpcerr.New(codes.ResourceExhausted, rpcerr.ReasonResponseTooLarge,
					fmt.Sprintf("the status of plugin %q is %d bytes, more than a response may hold (%d): list it with view PLUGIN_VIEW_BASIC, or raise --max-message-bytes", list[i].Name, n, budget),
					map[string]string{"plugin": list[i].Name, "resource": "response size"})
			}
			break
		}
		used += n
		out.Plugins = append(out.Plugins, st)
	}
	if i < len(list) && len(out.Plugins) > 0 {
		out.NextPageToken = encodePluginToken(out.Plugins[len(out.Plugins)-1].GetName())
	}
	return out, nil
}

// listed is the status of the named plugins (all when names is empty),
// sorted by name; an unknown name is NotFound.
func (c *control) listed(names []string) ([]manager.Status, error) {
	if len(names) == 0 {
		return c.s.m.List(), nil
	}
	names = slices.Clone(names)
	slices.Sort(names)
	names = slices.Compact(names)
	out := make([]manager.Status, 0, len(names))
	for _, n := range names {
		st, err := c.s.m.Get(n)
		if err != nil {
			return nil, toStatus(err)
		}
		out = append(out, st)
	}
	return out, nil
}

const (
	// maxPluginPage is the most plugins of one ListPlugins page.
	maxPluginPage = 1000
	// maxPluginPageBytes bounds a ListPlugins response to the 4 MiB that
	// gRPC clients (grpc-go, grpcurl, grpc-js) receive by default.
	maxPluginPageBytes = 4 << 20
	// pluginTokenReserve is room for next_page_token (a 63-byte name in
	// base64, with its tag and length) and slack.
	pluginTokenReserve = 256
	// pluginTokenPrefix versions the page token.
	pluginTokenPrefix = "p1:"
)

func encodePluginToken(name string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pluginTokenPrefix + name))
}

// decodePluginToken returns the name a page token continues after; "" for
// no token.
func decodePluginToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	name, ok := strings.CutPrefix(string(b), pluginTokenPrefix)
	if err != nil || !ok || manager.ValidateName(name) != nil {
		return "", invalid("page_token", "not a next_page_token of ListPlugins")
	}
	return name, nil
}

// healthAll is the response of Health for all plugins at one revision, in
// one view.
// Nothing changes at the same revision, so every caller until the next
// change gets the same message (never modified after it is built; grpc-go
// only reads it to marshal it, which is safe concurrently).
// The codec sends enc, its encoding made once, for every caller.
type healthAll struct {
	rev  uint64
	resp *pb.HealthResponse
	enc  []byte
}

func (c *control) Health(_ context.Context, req *pb.HealthRequest) (*pb.HealthResponse, error) {
	compact, err := isCompact(req.GetView())
	if err != nil {
		return nil, err
	}
	cache := &c.s.healthAll
	if compact {
		cache = &c.s.healthAllCompact
	}
	all := len(req.GetNames()) == 0
	if all {
		if h := cache.Load(); h != nil && h.rev == c.s.m.Revision() {
			return h.resp, nil
		}
	}
	hs, rev, err := c.s.m.Health(req.GetNames())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.HealthResponse{Revision: rev, Plugins: make([]*pb.PluginHealth, 0, len(hs))}
	for _, h := range hs {
		p := healthToProto(h)
		if compact {
			p = compactHealth(p)
		}
		out.Plugins = append(out.Plugins, p)
	}
	if all {
		enc, err := protobuf.Marshal(out)
		if err != nil {
			enc = nil // the codec marshals it per call
		}
		cache.Store(&healthAll{rev: rev, resp: out, enc: enc})
	}
	return out, nil
}

func (c *control) ListAudit(_ context.Context, req *pb.ListAuditRequest) (*pb.ListAuditResponse, error) {
	size := req.GetPageSize()
	if size == 0 {
		size = req.GetLimit()
	}
	if size > 10000 {
		return nil, invalid("page_size", fmt.Sprintf("%d is more than 10000", size))
	}
	before := req.GetBeforeSequence()
	if t := req.GetPageToken(); t != "" {
		var err error
		if before, err = parsePageToken(t, req.GetName()); err != nil {
			return nil, err
		}
	}
	page, err := c.s.m.Audit(req.GetName(), before, int(size))
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ListAuditResponse{Records: make([]*pb.AuditRecord, 0, len(page.Records))}
	for _, r := range page.Records {
		out.Records = append(out.Records, auditToProto(r))
	}
	if page.More && len(page.Records) > 0 {
		out.NextPageToken = pageToken(req.GetName(), page.Records[len(page.Records)-1].Sequence)
	}
	if cp := page.Checkpoint; cp != nil {
		out.Checkpoint = &pb.AuditCheckpoint{Sequence: cp.Sequence, Hash: cp.Hash}
	}
	return out, nil
}

func auditToProto(r manager.AuditRecord) *pb.AuditRecord {
	return &pb.AuditRecord{
		Sequence:      r.Sequence,
		Time:          wire.Timestamp(r.Time),
		Caller:        r.Caller,
		Action:        r.Action,
		Plugin:        r.Plugin,
		OldGeneration: r.OldGeneration,
		NewGeneration: r.NewGeneration,
		BinarySha256:  r.BinarySHA256,
		Binary:        r.Binary,
		Outcome:       r.Outcome,
		Error:         r.Error,
		PrevHash:      r.PrevHash,
		Hash:          r.Hash,
	}
}

// pageToken is the opaque token of the audit page after sequence before
// for plugin name: "a1:<name>:<before>" in base64url.
func pageToken(name string, before uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("a1:" + name + ":" + strconv.FormatUint(before, 10)))
}

func parsePageToken(t, name string) (uint64, error) {
	bad := func(why string) (uint64, error) {
		return 0, invalid("page_token", why+": pass the next_page_token of the previous page, with the same name")
	}
	b, err := base64.RawURLEncoding.DecodeString(t)
	if err != nil {
		return bad("not a page token")
	}
	rest, ok := strings.CutPrefix(string(b), "a1:")
	i := strings.LastIndexByte(rest, ':')
	if !ok || i < 0 {
		return bad("not a page token")
	}
	if rest[:i] != name {
		return bad(fmt.Sprintf("the token continues the listing of %q, not of %q", rest[:i], name))
	}
	before, err := strconv.ParseUint(rest[i+1:], 10, 64)
	if err != nil || before == 0 {
		return bad("not a page token")
	}
	return before, nil
}
