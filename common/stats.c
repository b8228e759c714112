/* placeholder: stats module, being written */
#include "stats.h"
