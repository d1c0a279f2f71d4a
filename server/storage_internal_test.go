package server

import (
	"errors"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// signedURLs signs every key but "unsignable".
type signedURLs struct{ expires time.Time }

func (u signedURLs) ObjectURL(key string) (string, time.Time, error) {
	if key == "unsignable" {
		return "", time.Time{}, errors.New("cannot sign")
	}
	return "https://store.example/" + key + "?sig=1", u.expires, nil
}

// TestStorageToProto: the copy of the outputs as the API shows it: its
// state, last error and attempts, each object with its URL signed when the
// state is answered (left out when it cannot be signed, and without a
// signer), and nothing without storage.
func TestStorageToProto(t *testing.T) {
	exp := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	objects := []state.StoredObject{
		{Node: "9", File: "a.png", Key: "p/t/d/r/9/a.png", Size: 3 << 20, ContentType: "image/png", SHA256: "ab12"},
		{Node: "9", File: "b.png", Key: "unsignable", Size: 1, ContentType: "image/png", SHA256: "cd34"},
	}
	tests := []struct {
		name    string
		storage *state.Storage
		urls    ObjectURLs
		check   func(t *testing.T, got *comfygatev1.OutputStorage)
	}{
		{"no storage", nil, signedURLs{exp}, func(t *testing.T, got *comfygatev1.OutputStorage) {
			if got != nil {
				t.Errorf("got %v, want none", got)
			}
		}},
		{"pending with an error", &state.Storage{State: state.StoragePending, Error: "store unavailable", Attempts: 2}, signedURLs{exp},
			func(t *testing.T, got *comfygatev1.OutputStorage) {
				if got.GetState() != comfygatev1.StorageState_STORAGE_STATE_PENDING || got.GetError() != "store unavailable" || got.GetAttempts() != 2 || len(got.GetObjects()) != 0 {
					t.Errorf("got %v", got)
				}
			}},
		{"stored, signed", &state.Storage{State: state.StorageStored, Objects: objects, Attempts: 1}, signedURLs{exp},
			func(t *testing.T, got *comfygatev1.OutputStorage) {
				o := got.GetObjects()
				if got.GetState() != comfygatev1.StorageState_STORAGE_STATE_STORED || len(o) != 2 {
					t.Fatalf("got %v", got)
				}
				if o[0].GetUrl() != "https://store.example/p/t/d/r/9/a.png?sig=1" || !o[0].GetUrlExpiresAt().AsTime().Equal(exp) ||
					o[0].GetKey() != "p/t/d/r/9/a.png" || o[0].GetSize() != 3<<20 || o[0].GetSha256() != "ab12" || o[0].GetNode() != "9" || o[0].GetFile() != "a.png" {
					t.Errorf("first object %v", o[0])
				}
				if o[1].GetUrl() != "" || o[1].GetUrlExpiresAt() != nil || o[1].GetSha256() != "cd34" {
					t.Errorf("an object that could not be signed: %v, want it without a URL", o[1])
				}
			}},
		{"stored, public base (no expiry)", &state.Storage{State: state.StorageStored, Objects: objects[:1]}, signedURLs{},
			func(t *testing.T, got *comfygatev1.OutputStorage) {
				if o := got.GetObjects()[0]; o.GetUrl() == "" || o.GetUrlExpiresAt() != nil {
					t.Errorf("got %v, want a URL without expiry", o)
				}
			}},
		{"no signer", &state.Storage{State: state.StorageStored, Objects: objects[:1]}, nil,
			func(t *testing.T, got *comfygatev1.OutputStorage) {
				if o := got.GetObjects()[0]; o.GetUrl() != "" || o.GetKey() == "" {
					t.Errorf("got %v, want the object without a URL", o)
				}
			}},
		{"failed", &state.Storage{State: state.StorageFailed, Error: "output larger than 1073741824 bytes", Attempts: 9}, nil,
			func(t *testing.T, got *comfygatev1.OutputStorage) {
				if got.GetState() != comfygatev1.StorageState_STORAGE_STATE_FAILED || got.GetError() == "" {
					t.Errorf("got %v", got)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &state.Record{RequestID: "r", DeploymentID: "d", State: runcomfy.StateSucceeded, Seq: 4, Storage: tc.storage}
			tc.check(t, recordToProto(rec, tc.urls).GetStorage())
		})
	}
}
