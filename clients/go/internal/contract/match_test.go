package contract

import "testing"

func TestMatch(t *testing.T) {
	actual, err := Decode([]byte(`{"content":"Echo: ping","usage":{"total_tokens":"12","estimated":false},
		"attempts":1,"tags":["a","b"],"violations":[{"field":"temperature","description":"0..2"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	good := []string{
		`{}`,
		`{"content":"Echo: ping"}`,
		`{"usage":{"total_tokens":12}}`,
		`{"usage":{"total_tokens":{"$gt":0,"$lte":"12"}}}`,
		`{"attempts":1.0}`,
		`{"cost_usd":{"$present":false}}`,
		`{"content":{"$present":true,"$contains":"ping","$len":10,"$nonEmpty":true}}`,
		`{"tags":["b"],"violations":[{"field":"temperature"}]}`,
		`{"usage":{"estimated":false}}`,
	}
	for _, p := range good {
		pat, err := Decode([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		if err := Match("$", pat, actual); err != nil {
			t.Errorf("pattern %s: %v", p, err)
		}
	}
	bad := []string{
		`{"content":"Echo: pong"}`,
		`{"missing":1}`,
		`{"usage":{"total_tokens":13}}`,
		`{"usage":{"total_tokens":{"$gt":12}}}`,
		`{"content":{"$present":false}}`,
		`{"cost_usd":{"$gt":0}}`,
		`{"tags":["c"]}`,
		`{"violations":[{"field":"top_p"}]}`,
		`{"content":{"$unknown":1}}`,
		`{"usage":{"estimated":"false"}}`,
		`{"content":{"$nonEmpty":false}}`,
	}
	for _, p := range bad {
		pat, err := Decode([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		if err := Match("$", pat, actual); err == nil {
			t.Errorf("pattern %s matched", p)
		}
	}
}

func TestSavedValue(t *testing.T) {
	view, err := Decode([]byte(`{"token":"gptk_1","client":{"name":"c","limits":{"requests_per_minute":1}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"token": "gptk_1", "client.name": "c"} {
		if got, err := SavedValue(view, path); err != nil || got != want {
			t.Errorf("SavedValue(%q) = %q, %v; want %q", path, got, err, want)
		}
	}
	for _, path := range []string{"missing", "client.missing", "token.deeper", "client.limits.requests_per_minute", "client"} {
		if got, err := SavedValue(view, path); err == nil {
			t.Errorf("SavedValue(%q) = %q, want an error", path, got)
		}
	}
}
