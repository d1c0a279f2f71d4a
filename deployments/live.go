package deployments

import "sync/atomic"

// Live is a deployments file that can be read again while the gateway runs
// (on SIGHUP): For answers from the version last read that was valid, so a
// broken edit leaves the policies in force as they were.
type Live struct {
	path string
	cur  atomic.Pointer[File]
}

// Open reads the file at path; an invalid file is an error, as at start.
func Open(path string) (*Live, error) {
	f, err := Load(path)
	if err != nil {
		return nil, err
	}
	l := &Live{path: path}
	l.cur.Store(f)
	return l, nil
}

// Reload reads the file again and puts it in force if it is valid;
// otherwise it returns why, and the version in force stays.
func (l *Live) Reload() error {
	f, err := Load(l.path)
	if err != nil {
		return err
	}
	l.cur.Store(f)
	return nil
}

// For is the policy of deploymentID in the version in force.
func (l *Live) For(deploymentID string) Policy { return l.cur.Load().For(deploymentID) }

// Len is the number of deployments the version in force lists.
func (l *Live) Len() int { return l.cur.Load().Len() }
