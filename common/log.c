/* placeholder: log module, being written */
#include "log.h"
