package client

import (
	"errors"
	"fmt"
	"math"
)

// ErrDimensionMismatch is returned (wrapped, with both lengths) by CosineSimilarity for vectors
// of different lengths. Test for it with errors.Is.
var ErrDimensionMismatch = errors.New("vectors have different dimensions")

// CosineSimilarity returns the cosine of the angle between a and b, in [-1, 1]: 1 for vectors
// pointing the same way, 0 for orthogonal ones. It computes in float64 whatever the inputs.
//
// When either vector is all zeros (or both are empty) the angle is undefined and it returns 0
// with a nil error. Vectors of different lengths are an error wrapping ErrDimensionMismatch.
//
// For vectors from Embed with Normalize set, the plain dot product gives the same value.
func CosineSimilarity(a, b []float32) (float64, error) {
	if len(a) != len(b) {
		return 0, fmt.Errorf("maistro: %w: %d and %d", ErrDimensionMismatch, len(a), len(b))
	}
	var dot, na, nb float64
	for i := range a {
		x, y := float64(a[i]), float64(b[i])
		dot += x * y
		na += x * x
		nb += y * y
	}
	if na == 0 || nb == 0 {
		return 0, nil
	}
	// Rounding can take the quotient a hair outside [-1, 1]; keep the documented range.
	return math.Max(-1, math.Min(1, dot/(math.Sqrt(na)*math.Sqrt(nb)))), nil
}
