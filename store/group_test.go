package store

import (
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A function that panics in the group commit fails alone, with an error;
// the writers batched with it commit, and the queue goes on (it used to
// hang every later writer).
func TestGroupCommitSurvivesAPanic(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	errs := make([]error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.update(func(tx *bolt.Tx) error {
				if i%10 == 3 {
					panic("a writer's bug")
				}
				return tx.Bucket(bucketMeta).Put([]byte{'k', byte(i)}, []byte{1})
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		switch {
		case i%10 == 3 && (err == nil || !strings.Contains(err.Error(), "panicked: a writer's bug")):
			t.Errorf("writer %d panicked, got %v", i, err)
		case i%10 != 3 && err != nil:
			t.Errorf("writer %d failed with a batch-mate's panic: %v", i, err)
		}
	}
	n := 0
	_ = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).ForEach(func(k, _ []byte) error {
			if len(k) == 2 && k[0] == 'k' {
				n++
			}
			return nil
		})
	})
	if n != 45 {
		t.Fatalf("%d writes committed, want 45", n)
	}
	// The queue still works.
	if err := s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte("after"), []byte{1}) }); err != nil {
		t.Fatal(err)
	}
}
