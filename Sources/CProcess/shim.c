// The wrappers are static inline in include/shim.h; SwiftPM needs one source file per C target.
#include "shim.h"
