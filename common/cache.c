/* placeholder: cache module, being written */
#include "cache.h"
