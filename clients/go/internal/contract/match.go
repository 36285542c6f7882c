// Package contract runs the language-neutral contract cases of
// tests/contract/cases.json (see tests/contract/README.md) against a running
// gateway. The runner itself is contract_test.go, built only with
// `-tags contract`; this file holds the pattern matcher.
package contract

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strings"
)

// Decode parses JSON keeping numbers exact (json.Number).
func Decode(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// Match reports how actual fails to match pattern (nil when it matches),
// following the pattern rules of tests/contract/README.md. path names the
// value in messages.
func Match(path string, pattern, actual any) error {
	switch p := pattern.(type) {
	case map[string]any:
		if isMatcher(p) {
			return matchMatcher(path, p, actual, true)
		}
		obj, ok := actual.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %s", path, show(actual))
		}
		for _, k := range sortedKeys(p) {
			sub := p[k]
			v, present := obj[k]
			if m, ok := sub.(map[string]any); ok && isMatcher(m) {
				if err := matchMatcher(path+"."+k, m, v, present); err != nil {
					return err
				}
				continue
			}
			if !present {
				return fmt.Errorf("%s.%s: missing (want %s)", path, k, show(sub))
			}
			if err := Match(path+"."+k, sub, v); err != nil {
				return err
			}
		}
		return nil
	case []any:
		arr, ok := actual.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %s", path, show(actual))
		}
		for i, want := range p {
			found := false
			for _, v := range arr {
				if Match("", want, v) == nil {
					found = true
					break
				}
			}
			if !found {
				return fmt.Errorf("%s[%d]: no element matches %s in %s", path, i, show(want), show(actual))
			}
		}
		return nil
	case json.Number, float64, int:
		want, _ := number(p)
		got, ok := number(actual)
		if !ok || want.Cmp(got) != 0 {
			return fmt.Errorf("%s: want %s, got %s", path, show(pattern), show(actual))
		}
		return nil
	default: // string, bool, nil
		if pattern != actual {
			return fmt.Errorf("%s: want %s, got %s", path, show(pattern), show(actual))
		}
		return nil
	}
}

func isMatcher(m map[string]any) bool {
	if len(m) == 0 {
		return false
	}
	for k := range m {
		if !strings.HasPrefix(k, "$") {
			return false
		}
	}
	return true
}

func matchMatcher(path string, m map[string]any, actual any, present bool) error {
	if want, ok := m["$present"]; ok {
		if want != present {
			if present {
				return fmt.Errorf("%s: want absent, got %s", path, show(actual))
			}
			return fmt.Errorf("%s: missing", path)
		}
	}
	if !present {
		if len(m) == 1 && m["$present"] != nil {
			return nil
		}
		return fmt.Errorf("%s: missing (want %s)", path, show(m))
	}
	for _, k := range sortedKeys(m) {
		arg := m[k]
		switch k {
		case "$present":
		case "$gt", "$gte", "$lt", "$lte":
			want, ok1 := number(arg)
			got, ok2 := number(actual)
			if !ok1 || !ok2 {
				return fmt.Errorf("%s: %s needs numbers, got %s", path, k, show(actual))
			}
			c := got.Cmp(want)
			if (k == "$gt" && c <= 0) || (k == "$gte" && c < 0) || (k == "$lt" && c >= 0) || (k == "$lte" && c > 0) {
				return fmt.Errorf("%s: want %s %s, got %s", path, k, show(arg), show(actual))
			}
		case "$nonEmpty":
			if (length(actual) > 0) != (arg == true) {
				return fmt.Errorf("%s: want $nonEmpty=%v, got %s", path, arg, show(actual))
			}
		case "$contains":
			s, ok := actual.(string)
			sub, _ := arg.(string)
			if !ok || !strings.Contains(s, sub) {
				return fmt.Errorf("%s: want a string containing %q, got %s", path, sub, show(actual))
			}
		case "$len":
			want, _ := number(arg)
			if want == nil || !want.IsInt() || length(actual) != int(want.Num().Int64()) {
				return fmt.Errorf("%s: want length %s, got %s", path, show(arg), show(actual))
			}
		default:
			return fmt.Errorf("%s: unknown matcher %s", path, k)
		}
	}
	return nil
}

// number converts a JSON number or numeric string (int64 in proto3 JSON) to an exact rational.
func number(v any) (*big.Rat, bool) {
	var s string
	switch v := v.(type) {
	case json.Number:
		s = v.String()
	case string:
		s = v
	case float64:
		return new(big.Rat).SetFloat64(v), true
	case int:
		return big.NewRat(int64(v), 1), true
	default:
		return nil, false
	}
	r, ok := new(big.Rat).SetString(s)
	return r, ok
}

func length(v any) int {
	switch v := v.(type) {
	case string:
		return len([]rune(v))
	case []any:
		return len(v)
	case map[string]any:
		return len(v)
	}
	return -1
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// SavedValue is the string at path (dotted proto field names, e.g.
// "client.token_prefix") of a response's JSON view: the value a case's
// "save" stores for later cases.
func SavedValue(view any, path string) (string, error) {
	v := view
	for _, key := range strings.Split(path, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			return "", fmt.Errorf("the response has no field %q (%s is not a message)", path, key)
		}
		if v, ok = obj[key]; !ok {
			// Field names only: the values may be secrets (tokens).
			return "", fmt.Errorf("the response has no field %q (fields there: %s)", path, strings.Join(sortedKeys(obj), ", "))
		}
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s is not a string", path)
	}
	return s, nil
}
