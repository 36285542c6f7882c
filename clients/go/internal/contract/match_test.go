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
