// Error classes are header-only; this file keeps their vtables in one translation unit.
#include "medrt/error.h"
