package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Audit returns the whole audit log (of plugin name, all when empty),
// newest first, reading it a page at a time, and the checkpoint it starts
// from when retention removed older records.
func (c *Client) Audit(ctx context.Context, name string) ([]*plugincontrolv1.AuditRecord, *plugincontrolv1.AuditCheckpoint, error) {
	var (
		out []*plugincontrolv1.AuditRecord
		cp  *plugincontrolv1.AuditCheckpoint
		tok string
	)
	for {
		resp, err := c.control.ListAudit(ctx, &plugincontrolv1.ListAuditRequest{Name: name, PageSize: 10000, PageToken: tok})
		if err != nil {
			return nil, nil, wrapError(err)
		}
		out = append(out, resp.GetRecords()...)
		cp = resp.GetCheckpoint()
		if tok = resp.GetNextPageToken(); tok == "" {
			return out, cp, nil
		}
	}
}

// AuditHash is the hash an audit record must carry: the lowercase hex
// SHA-256 of its prev_hash and fields, each followed by a NUL byte, in the
// order the API documents (plugincontrol.v1.AuditRecord.hash). It is
// computed here, apart from the daemon, so that a client checks the log
// rather than trusting it.
func AuditHash(r *plugincontrolv1.AuditRecord) string {
	h := sha256.New()
	for _, f := range []string{
		r.GetPrevHash(),
		strconv.FormatUint(r.GetSequence(), 10),
		r.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
		r.GetCaller(), r.GetAction(), r.GetPlugin(),
		strconv.FormatUint(r.GetOldGeneration(), 10), strconv.FormatUint(r.GetNewGeneration(), 10),
		r.GetBinary(), r.GetBinarySha256(), r.GetOutcome(), r.GetError(),
	} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// VerifyAudit checks the chain of a whole audit log (all plugins), as
// Audit returns it, newest first: every record matches its hash, chains to
// the record before it with no sequence missing, and the oldest chains to
// the checkpoint (or starts the log). It returns the newest record's hash,
// which an operator may keep elsewhere: a later verify that does not reach
// it shows the log was rewritten.
func VerifyAudit(records []*plugincontrolv1.AuditRecord, cp *plugincontrolv1.AuditCheckpoint) (head string, err error) {
	prev, prevSeq := "", uint64(0)
	if cp != nil {
		prev, prevSeq = cp.GetHash(), cp.GetSequence()
	}
	for i := len(records) - 1; i >= 0; i-- {
		r := records[i]
		switch {
		case AuditHash(r) != r.GetHash():
			return "", fmt.Errorf("audit record %d does not match its hash: it was changed after it was written", r.GetSequence())
		case r.GetPrevHash() != prev:
			return "", fmt.Errorf("audit record %d does not chain to the record before it (%d): a record was removed, inserted or changed", r.GetSequence(), prevSeq)
		case prevSeq != 0 && r.GetSequence() != prevSeq+1:
			return "", fmt.Errorf("audit records %d to %d are missing", prevSeq+1, r.GetSequence()-1)
		}
		prev, prevSeq = r.GetHash(), r.GetSequence()
	}
	return prev, nil
}
