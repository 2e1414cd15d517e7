package main

import "testing"

func TestTenantCapDefaultsToTheSlotsPlusOne(t *testing.T) {
	for _, tc := range []struct{ flag, backends, slots, want int }{
		{0, 1, 1, 2}, // make run: one simulator of one slot
		{0, 4, 2, 9},
		{3, 4, 2, 3}, // given: as given
	} {
		if got := tenantCap(tc.flag, tc.backends, tc.slots); got != tc.want {
			t.Errorf("tenantCap(%d, %d backends, %d slots) = %d, want %d", tc.flag, tc.backends, tc.slots, got, tc.want)
		}
	}
}
