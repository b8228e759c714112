/* placeholder: config module, being written */
#include "config.h"
