package readme

import "testing"

func TestSection(t *testing.T) {
	d := Parse("# T\n\n## A\n\ntext\n\n```go\npackage a\n```\n\n### A.1\n\n```sh\necho 1\n```\n\n## B\n\n```go\npackage b\n```\n")
	bs, err := d.Section("## A")
	if err != nil || len(bs) != 2 || bs[0].Lang != "go" || bs[0].Text != "package a\n" || bs[1].Lang != "sh" || bs[1].Line != 13 {
		t.Fatalf("## A: %+v %v", bs, err)
	}
	if b, err := d.One("## B", "go"); err != nil || b.Text != "package b\n" {
		t.Fatalf("## B: %+v %v", b, err)
	}
	if _, err := d.One("## A", "py"); err == nil {
		t.Fatal("a missing block passed")
	}
	if _, err := d.Section("## C"); err == nil {
		t.Fatal("a missing section passed")
	}
}
