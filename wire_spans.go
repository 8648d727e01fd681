package kappa

// Sets of entries as sorted, disjoint spans.

// intersectSpans returns the parts of a that lie in b; both sorted.
func intersectSpans(a, b []span) []span {
	var out []span
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].start, b[j].start), min(a[i].end, b[j].end)
		if lo < hi {
			out = append(out, span{lo, hi})
		}
		if a[i].end < b[j].end {
			i++
		} else {
			j++
		}
	}
	return out
}

func subtractSpan(in []span, x span) []span {
	var out []span
	for _, a := range in {
		if a.end <= x.start || a.start >= x.end {
			out = append(out, a)
			continue
		}
		if a.start < x.start {
			out = append(out, span{a.start, x.start})
		}
		if a.end > x.end {
			out = append(out, span{x.end, a.end})
		}
	}
	return out
}
