package comfyui

import "testing"

// Events go to the waiter of their prompt; one without a prompt_id (a
// progress of the running prompt from an older ComfyUI) goes to this
// client's prompt that is executing, and to none once it has finished.
func TestRouteByPromptID(t *testing.T) {
	c, err := NewClient(Config{BaseURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, b := c.register("a", false), c.register("b", false)
	node := "3"
	c.route(wsEvent{Type: "execution_start", Data: wsData{PromptID: "b"}})
	c.route(wsEvent{Type: "executing", Data: wsData{PromptID: "b", Node: &node}})
	c.route(wsEvent{Type: "progress", Data: wsData{Value: 1, Max: 2}})
	c.route(wsEvent{Type: "execution_start", Data: wsData{PromptID: "other-client"}})
	c.route(wsEvent{Type: "executing", Data: wsData{PromptID: "b"}}) // node null: b is done
	c.route(wsEvent{Type: "progress", Data: wsData{Value: 2, Max: 2}})

	if len(a.events) != 0 {
		t.Errorf("a got %d events of b", len(a.events))
	}
	var got []string
	for len(b.events) > 0 {
		e := <-b.events
		got = append(got, e.Type)
	}
	want := []string{"execution_start", "executing", "progress", "executing"}
	if len(got) != len(want) {
		t.Fatalf("b got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("b got %v, want %v", got, want)
		}
	}
	c.unregister("b", b)
	c.route(wsEvent{Type: "execution_start", Data: wsData{PromptID: "b"}})
	if len(b.events) != 0 {
		t.Error("an unregistered waiter got an event")
	}
}
