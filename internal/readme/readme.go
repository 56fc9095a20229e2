// Package readme reads the fenced code blocks of a Markdown document by
// section, so that tests can run what README.md tells a reader to run.
package readme

import (
	"fmt"
	"os"
	"strings"
)

// Block is a fenced code block.
type Block struct {
	// Lang is the info string after the opening fence ("go", "sh").
	Lang string
	// Text is the content, with a final newline.
	Text string
	// Line is the 1-based line of the opening fence.
	Line int
	// Marker is the text of an HTML comment on the line just before the
	// opening fence ("runnable" for <!-- runnable -->), "" when none: how
	// the documentation tests treat the block.
	Marker string
}

// Doc is a parsed Markdown document.
type Doc struct {
	lines []string
}

// Read parses the Markdown file at path.
func Read(path string) (*Doc, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(string(b)), nil
}

// Parse parses Markdown text.
func Parse(text string) *Doc { return &Doc{lines: strings.Split(text, "\n")} }

// Section returns the fenced blocks of the section whose heading line is
// heading (such as "## Writing a plugin"), up to the next heading of the
// same or a higher level. It fails when there is no such heading.
func (d *Doc) Section(heading string) ([]Block, error) {
	level := strings.IndexByte(heading, ' ')
	start := -1
	for i, l := range d.lines {
		if strings.TrimRight(l, " ") == heading {
			start = i
			break
		}
	}
	if start < 0 || level < 1 {
		return nil, fmt.Errorf("no heading %q", heading)
	}
	var out []Block
	for i := start + 1; i < len(d.lines); i++ {
		l := d.lines[i]
		if h := strings.IndexByte(l, ' '); h >= 1 && h <= level && strings.Count(l[:h], "#") == h {
			break
		}
		if b, next, ok := d.block(i); ok {
			out = append(out, b)
			i = next
		}
	}
	return out, nil
}

// All returns every fenced block of the document.
func (d *Doc) All() []Block {
	var out []Block
	for i := 0; i < len(d.lines); i++ {
		if b, next, ok := d.block(i); ok {
			out = append(out, b)
			i = next
		}
	}
	return out
}

// block reads the fenced block opening at line i (a fence indented by
// spaces, as in a list item, has that indentation taken off its lines) and
// returns it and the line of its closing fence.
func (d *Doc) block(i int) (Block, int, bool) {
	l := d.lines[i]
	trimmed := strings.TrimLeft(l, " ")
	if !strings.HasPrefix(trimmed, "```") {
		return Block{}, i, false
	}
	indent := l[:len(l)-len(trimmed)]
	b := Block{Lang: strings.TrimSpace(strings.TrimPrefix(trimmed, "```")), Line: i + 1}
	if i > 0 {
		prev := strings.TrimSpace(d.lines[i-1])
		if m, ok := strings.CutPrefix(prev, "<!--"); ok {
			if m, ok = strings.CutSuffix(m, "-->"); ok {
				b.Marker = strings.TrimSpace(m)
			}
		}
	}
	var text strings.Builder
	for i++; i < len(d.lines) && !strings.HasPrefix(strings.TrimLeft(d.lines[i], " "), "```"); i++ {
		text.WriteString(strings.TrimPrefix(d.lines[i], indent))
		text.WriteByte('\n')
	}
	b.Text = text.String()
	return b, i, true
}

// One returns the only block of language lang in the section, failing
// when there is none or more than one.
func (d *Doc) One(heading, lang string) (Block, error) {
	bs, err := d.Section(heading)
	if err != nil {
		return Block{}, err
	}
	var found []Block
	for _, b := range bs {
		if b.Lang == lang {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		return Block{}, fmt.Errorf("section %q has %d %s blocks, want 1", heading, len(found), lang)
	}
	return found[0], nil
}
