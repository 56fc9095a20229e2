package record

// InvalidError is a request that names a bad field. Nothing was changed.
type InvalidError struct {
	// Field is the spec field, in proto spelling.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

func (e *InvalidError) Error() string { return "invalid " + e.Field + ": " + e.Reason }
